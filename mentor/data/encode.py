"""Turn examples into token ids with labels only on the output tokens.

Causal models see prompt and output in one sequence; prompt positions get label -100 so the
loss is computed on output tokens only. Chat data is rendered with the tokenizer's chat
template, and the assistant spans are found by rendering each prefix, so any template works
without special markers. Seq2seq models get the prompt as encoder input and the last
assistant turn as target.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError

from mentor.data.formats import Example
from mentor.errors import DataValidationError, Problem

IGNORE = -100


@dataclass
class EncodeStats:
    examples: int = 0
    truncated_inputs: int = 0
    truncated_outputs: int = 0
    conversations: int = 0  # chat rows: without a chat template, the model learns "user: ... assistant: "

    def truncation(self) -> dict:
        return {"examples": self.examples, "truncated_inputs": self.truncated_inputs,
                "truncated_outputs": self.truncated_outputs}

    def summary(self) -> str:
        return (f"{self.examples} examples; {self.truncated_inputs} with input truncated, "
                f"{self.truncated_outputs} with output truncated")


def _segments(ex: Example, tokenizer, use_chat_template: bool) -> list[tuple[str, bool]]:
    """Split an example into (text, is_output) pieces in order."""
    if not use_chat_template:
        eos = tokenizer.eos_token or ""
        if ex.kind == "text":
            return [(ex.messages[0]["content"], False), (ex.messages[1]["content"] + eos, True)]
        pieces = []
        for m in ex.messages:
            head = f"{m['role']}: "
            if m["role"] == "assistant":
                pieces += [(head, False), (m["content"] + eos + "\n", m.get("weight", 1) == 1)]
            else:
                pieces.append((head + m["content"] + "\n", False))
        return pieces
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(ex.messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(ex.messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(ex.messages[: i + 1], tokenize=False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise ValueError("chat template does not render conversations as growing prefixes")
        pieces += [(prefix[len(done):], False), (full[len(prefix):], m.get("weight", 1) == 1)]
        done = full
    return pieces


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """A causal model's token ids with one BOS, as training and inference both build them: the one a
    chat template writes, else the tokenizer's own when it adds one (Llama 2, Mistral), else none.
    Returns `ids` itself when nothing is added."""
    bos = tokenizer.bos_token_id
    if bos is None or (ids and ids[0] == bos) or not adds_bos(tokenizer):
        return ids
    return [bos, *ids]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS before a text itself (asked each time: a tokenizer may change)."""
    probe = tokenizer("a").input_ids
    return bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id


def truncate_input(ids: list[int], max_tokens: int, *, is_seq2seq: bool, eos_id: int | None) -> list[int]:
    """An input cut to `max_tokens`, the same way for training and for generation: a causal model's
    keeps its end (the generation prompt sits next to the answer); an encoder's keeps its start and
    its closing end-of-sequence token."""
    if len(ids) <= max_tokens:
        return ids
    if not is_seq2seq:
        return ids[-max_tokens:]
    return ids[: max_tokens - 1] + ids[-1:] if eos_id is not None and ids[-1] == eos_id else ids[:max_tokens]


def render_prompt(messages: list[dict], tokenizer, use_chat_template: bool, kind: str = "chat") -> str:
    """The text a model continues at inference: everything before the answer."""
    if use_chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if kind == "text":
        return messages[-1]["content"]
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def encode(ex: Example, tokenizer, **options) -> dict:
    """Token ids and labels for one example (see `_encode`); a row the tokenizer or its chat template
    cannot take is an error naming its file and line, not a traceback."""
    try:
        return _encode(ex, tokenizer, **options)
    except (ValueError, TemplateError) as err:
        field = "messages" if ex.kind == "chat" else "input_text"
        raise DataValidationError([Problem(ex.file or "data", ex.line, field, f"cannot be encoded: {err}")]) from None


def _encode(ex: Example, tokenizer, *, is_seq2seq: bool, use_chat_template: bool,
            max_input_tokens: int, max_output_tokens: int, stats: EncodeStats | None = None) -> dict:
    """Token ids and labels for one example, with input and output truncated to their limits.

    The input keeps its end (causal models need the generation prompt next to the output);
    the output keeps its start.
    """
    stats = stats if stats is not None else EncodeStats()
    stats.examples += 1
    stats.conversations += ex.kind == "chat"
    if is_seq2seq:
        prompt = render_prompt(ex.messages[:-1], tokenizer, use_chat_template, ex.kind)
        target = ex.messages[-1]["content"]
        src = tokenizer(prompt).input_ids
        tgt = tokenizer(text_target=target).input_ids
        if tokenizer.eos_token_id is not None and tgt[-1:] != [tokenizer.eos_token_id]:
            tgt = tgt + [tokenizer.eos_token_id]  # T5's tokenizer appends it, others don't: without it the student never stops
        if len(src) > max_input_tokens:
            stats.truncated_inputs += 1
            src = truncate_input(src, max_input_tokens, is_seq2seq=True, eos_id=tokenizer.eos_token_id)
        if len(tgt) > max_output_tokens:
            stats.truncated_outputs += 1
            tgt = tgt[:max_output_tokens]
        return {"input_ids": src, "attention_mask": [1] * len(src), "labels": tgt}

    ids: list[int] = []
    mask: list[bool] = []
    for text, is_out in _segments(ex, tokenizer, use_chat_template):
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        mask += [is_out] * len(piece)
    if with_bos(tokenizer, ids) is not ids:  # the same BOS rule as at inference
        ids, mask = [tokenizer.bos_token_id, *ids], [False, *mask]
    # The final output span is the "output"; everything before it is the "input".
    last_out_start = len(mask)
    while last_out_start > 0 and mask[last_out_start - 1]:
        last_out_start -= 1
    inp_ids, inp_mask = ids[:last_out_start], mask[:last_out_start]
    out_ids = ids[last_out_start:]
    if len(out_ids) > max_output_tokens:
        stats.truncated_outputs += 1
        out_ids = out_ids[:max_output_tokens]
    if len(inp_ids) > max_input_tokens:
        stats.truncated_inputs += 1
        inp_ids = truncate_input(inp_ids, max_input_tokens, is_seq2seq=False, eos_id=tokenizer.eos_token_id)
        inp_mask = inp_mask[-max_input_tokens:]
    ids = inp_ids + out_ids
    labels = [t if m else IGNORE for t, m in zip(inp_ids, inp_mask)] + out_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

