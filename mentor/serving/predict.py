"""Prediction with a tuned (or any) model: one text, or a JSONL file in and out (batch prediction).

Prompts are rendered exactly as in training (the chat template when the model was tuned with
it), so a tuned model sees at inference what it saw when it learned. Generation is
`mentor.serving.generate`, the one batched path local teachers use too.

Batch prediction is resumable: every answer is kept in the answer log (`mentor.serving.answer_log`,
which the `batch` job kind answers through too) the moment it is generated, keyed by input line and by a
hash of the input file, the model and the generation settings; a rerun answers only the rows still
missing, and the output file appears (atomically) only when every row is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mentor.data.encode import render_prompt, with_bos
from mentor.data.formats import prompt_messages
from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError
from mentor.files import check_output_path
from mentor.model_record import ModelRecord
from mentor.models import resolve
from mentor.serving.answer_log import AnswerLog, answer_key, log_path
from mentor.serving.generate import (
    GeneratedText,
    SamplingParams,
    context_length,
    generate_stream,
    model_fingerprint,
)
from mentor.serving.pool import ModelPool, Servable, adapter_names

log = logging.getLogger("mentor")


@dataclass(frozen=True)
class PromptStyle:
    """How a model learned its prompts, from its folder's record: what `mentor predict`, the server
    and a reinforcement job that starts from it all render, so the model sees one text everywhere."""

    use_chat_template: bool
    prompt_format: str  # a model tuned on conversations without a chat template learned "user: ...\nassistant: "
    task_prefix: str  # distilled step-by-step students answer a task named by a prefix: "[label] "
    instruction: str | None  # preference-tuned models were trained with an instruction before every prompt

    @classmethod
    def of(cls, record: ModelRecord, tokenizer) -> PromptStyle:
        use = bool(getattr(tokenizer, "chat_template", None)) if record.use_chat_template is None else record.use_chat_template
        return cls(use, record.prompt_format, record.task_prefix, record.instruction)

    def render(self, tokenizer, item: str | list[dict], prefix: str | None = None) -> str:
        """The prompt as the model learned it: chat template, instruction, task prefix (a step-by-step
        student's label task unless `prefix` names another, e.g. its `rationale_prefix`)."""
        prefix = self.task_prefix if prefix is None else prefix
        if self.instruction:
            prefix = f"{self.instruction}\n{prefix}"
        if isinstance(item, str):
            messages = [{"role": "user", "content": prefix + item}]
        else:
            messages = [*item[:-1], {**item[-1], "content": prefix + item[-1]["content"]}]
        kind = "text" if isinstance(item, str) and self.prompt_format == "text" else "chat"
        return render_prompt(messages, tokenizer, self.use_chat_template, kind)


class Predictor:
    """A model ready to answer, rendered and generated exactly as `mentor server` answers it: the
    same model pool (a LoRA adapter stays an adapter on its base) and the same generation path."""

    def __init__(self, model_ref: str | Servable, dtype: torch.dtype = torch.float32, pool: ModelPool | None = None):
        self.servable = model_ref if isinstance(model_ref, Servable) else Servable.of(model_ref)
        if self.servable.is_reward_model:
            raise MentorError(reward_model_refusal(self.servable.name))
        self._own_pool = pool is None
        self.pool = pool or ModelPool(dtype=dtype)
        self.loaded = self.pool.base_of(self.servable)
        self.tokenizer = self.loaded.tokenizer
        record = self.servable.record
        self.style = PromptStyle.of(record, self.tokenizer)
        self.max_input_tokens = record.max_input_tokens
        self.rationale_prefix = record.rationale_prefix

    @contextmanager
    def held(self) -> Iterator:
        """The model answering (with its adapter attached), held in the pool until the block ends:
        a pool shared with other models (a server's) may otherwise evict it, or delete its adapter's
        layers, while the caller still uses it."""
        loaded, _ = self.pool.acquire([self.servable])
        try:
            yield loaded.model
        finally:
            self.pool.release([self.servable])

    @property
    def model(self):
        """The model answering (with its adapter attached), for a Predictor with a pool of its own
        (which evicts nothing it holds); with a shared pool use `with predictor.held() as model:`."""
        if not self._own_pool:
            raise MentorError("Predictor.model is not held in a shared model pool (another request may evict "
                              "it); use `with predictor.held() as model:`")
        with self.held() as model:
            return model

    @property
    def parameters(self) -> int:
        """Parameters of the model answering (an adapter's few are not counted: merged, they add none)."""
        with self.held() as model:
            return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)

    def render(self, item: str | list[dict], prefix: str | None = None) -> str:
        """The prompt as the model learned it (see `PromptStyle.render`)."""
        return self.style.render(self.tokenizer, item, prefix)

    @property
    def task_prefix(self) -> str:
        return self.style.task_prefix

    def prompt_tokens(self, prompt: str) -> int:
        """A rendered prompt's length in tokens as generation feeds it (a causal model's BOS included)."""
        if self.loaded.is_seq2seq:
            return len(self.tokenizer(prompt).input_ids)
        return len(with_bos(self.tokenizer, self.tokenizer(prompt, add_special_tokens=False).input_ids))

    def room(self, prompts: list[str]) -> int | None:
        """Tokens a causal model's context leaves for the answer after the longest prompt (None: no
        limit is known, or an encoder-decoder, whose answer has positions of its own)."""
        context = context_length(self.loaded.model)
        if context is None or self.loaded.is_seq2seq:
            return None
        return context - max(map(self.prompt_tokens, prompts))

    def input_limit(self, max_new_tokens: int) -> int:
        """The most prompt tokens kept (longer prompts are cut as training cut them): training's
        limit, and what the model's context leaves beside the answer (an encoder's: all of it)."""
        context = context_length(self.loaded.model)
        if context is None:
            return self.max_input_tokens
        if self.loaded.is_seq2seq:
            return min(self.max_input_tokens, context)
        if max_new_tokens >= context:
            raise MentorError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                              f"of {context} tokens")
        return min(self.max_input_tokens, context - max_new_tokens)

    def overflow(self, prompts: list[str], max_new_tokens: int) -> str | None:
        """Why these prompts and answers do not fit in the model's context (OpenAI's API refuses such
        a request rather than cut it), or None."""
        context = context_length(self.loaded.model)
        for prompt in prompts if context else []:
            n = self.prompt_tokens(prompt)
            if self.loaded.is_seq2seq and n > context:
                return f"the prompt is {n} tokens: {n - context} more than the model's context of {context} tokens"
            if not self.loaded.is_seq2seq and n + max_new_tokens > context:
                return (f"the prompt is {n} tokens and max_tokens {max_new_tokens}: {n + max_new_tokens - context} "
                        f"more than the model's context of {context} tokens")
        return None

    def stream(self, prompts: list[str], max_new_tokens: int = 256, temperature: float = 0.0,
               batch_size: int = 8, progress: bool = False) -> Iterator[tuple[int, GeneratedText]]:
        """(prompt index, completion) for already-rendered prompts, batch by batch, in prompt order."""
        params = prediction_params(max_new_tokens, temperature)
        limit = self.input_limit(max_new_tokens)
        loaded, names = self.pool.acquire([self.servable])
        try:
            for index, [output] in generate_stream(loaded, prompts, params, batch_size=batch_size,
                                                   max_input_tokens=limit, progress=progress,
                                                   desc="predicting",
                                                   adapter_names=adapter_names(loaded, names, len(prompts))):
                yield index, output
        finally:
            self.pool.release([self.servable])

    def generate(self, prompts: list[str], max_new_tokens: int = 256, temperature: float = 0.0,
                 batch_size: int = 8, progress: bool = False) -> list[str]:
        """Generate continuations of already-rendered prompts, in batches, greedy by default."""
        outputs = [""] * len(prompts)
        for index, output in self.stream(prompts, max_new_tokens, temperature, batch_size, progress):
            outputs[index] = output.text.strip()
        return outputs

    def predict(self, items: str | list, **kwargs) -> str | list[str]:
        """Answer one input (text or messages) or a list of them."""
        single = isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], dict))
        batch = [items] if single else list(items)
        answers = self.generate([self.render(x) for x in batch], **kwargs)
        return answers[0] if single else answers


def reward_model_refusal(name: str) -> str:
    return (f"{name} is a reward model: it scores answers and does not generate text; score with "
            "`mentor score`, `mentor.score(...)` or POST /v1/mentor/score")


def prediction_params(max_new_tokens: int = 256, temperature: float = 0.0) -> SamplingParams:
    """Predictions decode greedily, or sample with the model's own top-p/top-k defaults."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)


def read_prediction_inputs(path: Path) -> list[tuple[int, dict, str | list[dict]]]:
    """(line number, row, input) for rows with `input_text` or `messages` (ending in a user turn);
    errors name file, line, field."""
    def parse(row: dict, lineno: int):
        if isinstance(row.get("input_text"), str) and row["input_text"].strip():
            return (lineno, row, row["input_text"]), []
        if "messages" in row:
            msgs, problems = prompt_messages(row["messages"])
            return ((lineno, row, msgs) if msgs else None), problems
        return None, [("input_text", "missing or empty (or give 'messages')")]

    return read_jsonl(path, parse, "input")


def _settings(model_ref: str, params: SamplingParams) -> dict:
    """What decides a prediction besides its input: the model (its files' fingerprint) and the settings."""
    source = resolve(model_ref)
    model = str(Path(source).resolve()) if Path(source).exists() else source
    return {"model": model + model_fingerprint(model_ref), "params": params.to_json()}


def predict_file(model_ref: str, input_path: str, output_path: str, *, max_new_tokens: int = 256,
                 temperature: float = 0.0, batch_size: int = 8, progress: bool = True) -> Path:
    """Batch prediction: every input row gets a `prediction`; the output appears only when complete.

    Answers are saved to a partial file (`.NAME.partial` beside the output) as they arrive, so a
    killed run loses nothing: rerun the same command and only the missing rows are generated."""
    src = Path(input_path).expanduser()
    rows = read_prediction_inputs(src)
    dst = Path(output_path).expanduser()
    check_output_path(dst)
    params = prediction_params(max_new_tokens, temperature)
    header = {"partial_of": str(dst), "input": str(src), "model": model_ref, "params": params.to_json()}
    answers = AnswerLog(log_path(dst), answer_key(src, _settings(model_ref, params)), header)
    todo = [(lineno, item) for lineno, _, item in rows if lineno not in answers.answers]
    if answers.answers and todo:
        log.info(f"resuming {dst}: {len(rows) - len(todo)} of {len(rows)} rows already answered ({answers.path})")
    if todo:
        _predict_rows(model_ref, src, todo, answers, max_new_tokens, temperature, batch_size, progress)
    done = answers.answers
    # finish_reason "length": the answer was cut at max_new_tokens, not finished
    answers.finish({dst: ({**row, "prediction": done[lineno]["prediction"],
                           "finish_reason": done[lineno].get("finish_reason")} for lineno, row, _ in rows)})
    cut = sum(done[lineno].get("finish_reason") == "length" for lineno, _, _ in rows)
    if cut:
        log.warning(f"{cut} of {len(rows)} predictions reached --max-new-tokens ({max_new_tokens}) before they "
                    "ended (finish_reason 'length'); raise it to let them finish")
    return dst


def _predict_rows(model_ref: str, src: Path, todo: list[tuple[int, str | list[dict]]], answers: AnswerLog,
                  max_new_tokens: int, temperature: float, batch_size: int, progress: bool) -> None:
    """Answer the rows still missing, each kept in the log the moment it is generated."""
    predictor = Predictor(model_ref)
    prompts = [predictor.render(item) for _, item in todo]
    limit = predictor.input_limit(max_new_tokens)
    cut = [lineno for (lineno, _), p in zip(todo, prompts) if predictor.prompt_tokens(p) > limit]
    if cut:
        log.warning(f"{len(cut)} input(s) longer than {limit} tokens (the model's context less --max-new-tokens, "
                    f"or training's limit) are cut as training cut them, e.g. {src}:{cut[0]}")
    for index, output in predictor.stream(prompts, max_new_tokens, temperature, batch_size, progress):
        answers.add([(todo[index][0], {"prediction": output.text.strip(), "finish_reason": output.finish_reason,
                                       "prompt_tokens": output.prompt_tokens,
                                       "completion_tokens": output.completion_tokens})])
