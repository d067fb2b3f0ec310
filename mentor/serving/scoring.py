"""Log-probabilities of given tokens: one forward pass, no generation.

What a teacher is asked when a student learns its distributions: for each position of a token
sequence, the model's top-k next-token log-probs and the log-prob of the token that actually
follows. The same function answers mentor's own `/v1/completions` with `echo`/`logprobs` and
`prompt_logprobs`, and the in-process `hf:` log-prob teacher, so a served mentor teacher and an
in-process one give the same numbers (up to the float rounding that batch padding brings).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mentor.data.encode import with_bos
from mentor.serving.generate import _one_adapter  # the engine's adapter scoping, shared


@dataclass(frozen=True)
class PromptScores:
    """One sequence scored. Entry i (i >= 1) is about token i given tokens[:i]; entry 0 is None (no
    token precedes the first), as OpenAI's and vLLM's answers have it."""

    ids: list[int]
    token_logprobs: list[float | None]  # log p(ids[i] | ids[:i])
    top_ids: list[list[int] | None]  # the k most likely next tokens, most likely first
    top_logprobs: list[list[float] | None]
    token_ranks: list[int | None]  # 1 + how many tokens are more likely than the actual one


def encode_text(tokenizer, text: str) -> list[int]:
    """A text prompt's token ids as a causal model is fed them (its BOS as in training and generation)."""
    return with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def score_tokens(loaded, sequences: Sequence[Sequence[int]], k: int, adapter_names: list[str] | None = None,
                 batch_size: int = 8) -> list[PromptScores]:
    """Top-`k` log-probs (at temperature 1) at every position of each sequence, and the log-prob of
    each actual next token; sequences are right-padded in batches of `batch_size` (causal attention
    keeps padding out of every real position)."""
    model, tok = loaded.model, loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[PromptScores] = []
    for b in range(0, len(sequences), batch_size):
        rows = [list(s) for s in sequences[b : b + batch_size]]
        names = adapter_names[b : b + batch_size] if adapter_names is not None else None
        longest = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (longest - len(r)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows], device=model.device)
        kwargs = {}
        scope = nullcontext()
        if names is not None and len(set(names)) == 1:
            scope = _one_adapter(model, names[0])
        elif names is not None:  # PEFT: each row with its own adapter
            kwargs["adapter_names"] = names
        with scope:
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # position j predicts token j + 1
        top_v, top_i = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1) if k > 0 else (None, None)
        actual = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
        ranks = (logprobs > actual[..., None]).sum(-1) + 1
        for r, row in enumerate(rows):
            n = len(row) - 1
            out.append(PromptScores(
                ids=row,
                token_logprobs=[None, *actual[r, :n].tolist()],
                top_ids=[None, *(top_i[r, :n].tolist() if k > 0 else [[] for _ in range(n)])],
                top_logprobs=[None, *(top_v[r, :n].tolist() if k > 0 else [[] for _ in range(n)])],
                token_ranks=[None, *ranks[r, :n].tolist()]))
    return out
