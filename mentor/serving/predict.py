"""Prediction with a tuned (or any) model: one text, or a JSONL file in and out (batch prediction).

Prompts are rendered exactly as in training (the chat template when the model was tuned with
it), so a tuned model sees at inference what it saw when it learned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mentor.data.encode import render_prompt
from mentor.data.jsonl import read_jsonl
from mentor.models import load_model, resolve


class Predictor:
    def __init__(self, model_ref: str, dtype: torch.dtype = torch.float32):
        self.loaded = load_model(model_ref, dtype=dtype)
        # a LoRA adapter is folded into the base weights for inference: the same outputs, without the
        # adapters' extra matmuls in every layer at every generated token
        model = self.loaded.model.merge_and_unload() if self.loaded.adapter else self.loaded.model
        self.model = model.eval()
        self.tokenizer = self.loaded.tokenizer
        meta_path = Path(resolve(model_ref)) / "mentor_model.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.use_chat_template = meta.get("use_chat_template", bool(getattr(self.tokenizer, "chat_template", None)))
        self.max_input_tokens = meta.get("max_input_tokens", 7168)
        # distilled step-by-step students answer a task named by a prefix: "[label] ", "[rationale] "
        self.task_prefix = meta.get("task_prefix", "")
        self.rationale_prefix = meta.get("rationale_prefix")
        # preference-tuned models were trained with an instruction before every prompt
        self.instruction = meta.get("instruction")

    def render(self, item: str | list[dict], prefix: str | None = None) -> str:
        prefix = self.task_prefix if prefix is None else prefix
        if self.instruction:
            prefix = f"{self.instruction}\n{prefix}"
        if isinstance(item, str):
            messages = [{"role": "user", "content": prefix + item}]
        else:
            messages = [*item[:-1], {**item[-1], "content": prefix + item[-1]["content"]}]
        kind = "text" if isinstance(item, str) else "chat"
        return render_prompt(messages, self.tokenizer, self.use_chat_template, kind)

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int = 256, temperature: float = 0.0,
                 batch_size: int = 8, progress: bool = False) -> list[str]:
        """Generate continuations of already-rendered prompts, in batches, greedy by default."""
        tok = self.tokenizer
        tok.padding_side = "left"
        outputs: list[str] = []
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="predicting", unit="batch", disable=not progress):
            chunk = prompts[start:start + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens,
                      add_special_tokens=self.loaded.is_seq2seq)
            gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                              do_sample=temperature > 0)
            if temperature > 0:
                gen_kwargs["temperature"] = temperature
            out = self.model.generate(**enc, **gen_kwargs)
            if not self.loaded.is_seq2seq:
                out = out[:, enc["input_ids"].shape[1]:]
            outputs += [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
        return outputs

    def predict(self, items: str | list, **kwargs) -> str | list[str]:
        """Answer one input (text or messages) or a list of them."""
        single = isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], dict))
        batch = [items] if single else list(items)
        answers = self.generate([self.render(x) for x in batch], **kwargs)
        return answers[0] if single else answers


def read_prediction_inputs(path: Path) -> list[tuple[dict, str | list[dict]]]:
    """Rows with `input_text` or `messages` (ending in a user turn); errors name file, line, field."""
    def parse(row: dict, lineno: int):
        if isinstance(row.get("input_text"), str) and row["input_text"].strip():
            return (row, row["input_text"]), []
        if isinstance(row.get("messages"), list) and row["messages"]:
            msgs = row["messages"]
            if isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
                msgs = msgs[:-1]  # an answer already present is the reference, not part of the prompt
            return (row, msgs), []
        return None, [("input_text", "missing or empty (or give 'messages')")]

    return read_jsonl(path, parse, "input")


def predict_file(model_ref: str, input_path: str, output_path: str, **kwargs) -> Path:
    """Batch prediction: every input row gets a `prediction`; the output appears only when complete."""
    rows = read_prediction_inputs(Path(input_path))
    predictor = Predictor(model_ref)
    answers = predictor.generate([predictor.render(x) for _, x in rows], progress=True, **kwargs)
    dst = Path(output_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for (row, _), answer in zip(rows, answers):
            f.write(json.dumps({**row, "prediction": answer}, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)
    return dst
