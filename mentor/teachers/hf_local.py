"""A local teacher: any model `load_model` loads, generating in batches with transformers.

Spec: `hf:REF` sends each prompt as one user message through the tokenizer's chat template (like
the `openai:` chat route; the raw prompt when the tokenizer has no template); `hf-completions:REF`
always sends the raw prompt. The model loads on first use, so a fully cached run never loads it.
For a local folder the identity carries a fingerprint of its files, so retraining the teacher in
place does not serve the old teacher's cached answers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mentor.errors import MentorError
from mentor.teachers.base import Completion, GenerationParams, OnAnswer, Teacher, apply_stop

ROUTES = {"hf": True, "hf-chat": True, "hf-completions": False}
_FINGERPRINTED = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt")


def _fingerprint(ref: str) -> str:
    """'#' + a short hash of the resolved folder's file names, sizes and mtimes ('' for a hub id)."""
    from mentor.models import resolve

    folder = Path(resolve(ref))
    if not folder.is_dir():
        return ""
    files = sorted({p for pattern in _FINGERPRINTED for p in folder.glob(pattern)})
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return "#" + hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def _stop_in_generated(tokenizer, stop: list[str], start: int):
    """Ends a row once its generated text holds a stop string. transformers' own `stop_strings`
    also match a stop string that begins in the prompt, ending answers early where an
    OpenAI-compatible server, which looks at the completion only, would not."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stop = [s for s in stop if s]
    window = 4 * max(map(len, stop), default=1) + 4  # a just-completed stop string fits in its bytes' tokens

    class StopInGenerated(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, start:][:, -window:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in tails], device=input_ids.device)

    return StoppingCriteriaList([StopInGenerated()])


class HFTeacher(Teacher):
    """Batched `model.generate` on a local model; greedy or sampled as the params say."""

    def __init__(self, ref: str, chat: bool = True, cache=None, batch_size: int = 8, progress: bool | None = None):
        scheme = "hf" if chat else "hf-completions"
        super().__init__(f"{scheme}:{ref}{_fingerprint(ref)}", cache=cache, progress=progress)
        self.ref, self.chat, self.batch_size = ref, chat, max(1, batch_size)
        self._loaded = None

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "HFTeacher":
        scheme, _, ref = spec.partition(":")
        if scheme not in ROUTES or not ref:
            raise MentorError(f"not a local teacher spec: {spec!r}; write hf:MODEL_REF (e.g. hf:smollm2-135m)")
        return cls(ref, chat=ROUTES[scheme], **kwargs)

    @property
    def loaded(self):
        """The model, loaded on first need; causal tokenizers pad on the left so batches generate right."""
        if self._loaded is None:
            from mentor.models import load_model

            loaded = load_model(self.ref)
            tok = loaded.tokenizer
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if not loaded.is_seq2seq:
                tok.padding_side = "left"
            loaded.model.eval()
            self._loaded = loaded
        return self._loaded

    def format(self, prompt: str) -> str:
        """The text the model sees for a prompt."""
        tok = self.loaded.tokenizer
        if self.chat and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt

    def _generate(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        import torch

        model, tok, seq2seq = self.loaded.model, self.loaded.tokenizer, self.loaded.is_seq2seq
        # a chat template writes its own special tokens; a raw prompt gets the tokenizer's usual ones
        templated = self.chat and getattr(tok, "chat_template", None)
        enc = tok([self.format(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=not templated)
        enc = enc.to(model.device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=params.n, pad_token_id=tok.pad_token_id)
        if params.temperature > 0:
            # top_k=0: sample like an OpenAI-compatible server does, not with transformers' default top_k=50
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        start = 1 if seq2seq else enc["input_ids"].shape[1]  # where generated tokens begin
        if params.stop:  # stop early to save time; the text is cut at the stop string below anyway
            kwargs.update(stopping_criteria=_stop_in_generated(tok, params.stop, start))
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        new = out[:, start:]
        tokens_in = enc["attention_mask"].sum(dim=1).tolist()
        answers: list[list[Completion]] = [[] for _ in prompts]
        for row, ids in enumerate(new.tolist()):
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            n_out = sum(1 for i in ids if i != tok.pad_token_id or i == tok.eos_token_id)
            text = apply_stop(tok.decode(ids, skip_special_tokens=True), params.stop)
            answers[row // params.n].append(Completion(text, tokens_in[row // params.n], n_out))
        return answers

    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        # similar lengths batch together, so less padding is computed
        order = sorted(prompts, key=len, reverse=True)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            self.stats.add(calls=len(batch))
            for prompt, completions in zip(batch, self._generate(batch, params)):
                on_answer(prompt, completions)
        return {}
