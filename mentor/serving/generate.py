"""The one batched-generation path for local models: predictions (`Predictor`, `predict_file`),
local teachers (`HFTeacher`), and whatever else answers prompts with a loaded model.

Prompts arrive already rendered (chat template applied by the caller). Every answer comes back
as a `GeneratedText`: the text, its token counts and why it ended, which is what an
OpenAI-compatible server reports (`usage`, `finish_reason`).

- causal models are padded on the left, as batched generation needs; seq2seq inputs are padded
  on the side the tokenizer says;
- a stop string ends a row only once it appears in the row's generated text (not in the prompt),
  and the text is cut before the first one, as OpenAI-compatible servers do;
- greedy decoding with `n > 1` generates once and returns `n` copies (what a server answers);
- generation is transformers' `model.generate`; nothing here decodes token by token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mentor.data.encode import truncate_input, with_bos
from mentor.serving.stop import apply_stop

FinishReason = Literal["stop", "length"]
BASE_ADAPTER = "__base__"  # the adapter name of rows that use the base model alone
_FINGERPRINTED = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt")


@dataclass(frozen=True)
class SamplingParams:
    """How to generate. `top_p`/`top_k` None leave the model's generation config in charge;
    `top_k=0` samples from the whole distribution, like an OpenAI-compatible server. `seed` gives
    each prompt a random generator of its own, seeded with it, so a sampled answer is the same
    whatever it is batched with (None: torch's global RNG); greedy decoding has no use for it."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1  # completions per prompt
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1 or self.temperature < 0:
            raise ValueError(f"need max_new_tokens >= 1, n >= 1 and temperature >= 0, got {self}")
        object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def to_json(self) -> dict:
        return {**asdict(self), "stop": sorted(set(self.stop))}


@dataclass(frozen=True)
class GeneratedText:
    """One completion. `prompt_tokens` counts the prompt without padding; `completion_tokens` the
    generated tokens up to and including an end-of-sequence token; `finish_reason` is "stop" when
    an end-of-sequence token or a stop string ended it and "length" when `max_new_tokens` did."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


def generate(loaded, prompts: Sequence[str], params: SamplingParams | None = None, **options) -> list[list[GeneratedText]]:
    """`params.n` completions for each prompt, in prompt order; options as for `generate_stream`."""
    results: list[list[GeneratedText]] = [[] for _ in prompts]
    for index, outputs in generate_stream(loaded, prompts, params, **options):
        results[index] = outputs
    return results


def generate_stream(
    loaded,
    prompts: Sequence[str],
    params: SamplingParams | None = None,
    *,
    batch_size: int = 8,
    add_special_tokens: bool | None = None,
    max_input_tokens: int | None = None,
    sort_by_length: bool = False,
    progress: bool = False,
    desc: str = "generating",
    adapter_names: Sequence[str] | None = None,
    on_tokens=None,
    abandoned: Callable[[], bool] | None = None,
    seeds: Sequence[int | None] | None = None,
) -> Iterator[tuple[int, list[GeneratedText]]]:
    """Yield `(prompt index, its n completions)` batch by batch, as each batch finishes.

    `loaded` is what `mentor.models.load_model` returns (`.model`, `.tokenizer`, `.is_seq2seq`).
    `add_special_tokens`: whether the tokenizer adds its special tokens to the prompts (default:
    only for seq2seq, since a rendered chat prompt carries its own). `max_input_tokens` cuts
    longer prompts as training does (`truncate_input`). `sort_by_length` batches similar lengths
    together (less padding to compute); results are then yielded longest prompt first.
    `adapter_names` (one per prompt) runs a PEFT model's adapters in one mixed batch ("__base__":
    none). `on_tokens(prompt indices, token ids)` is called at every decoding step with each row's
    new token (rows: a prompt's copies in turn), for streaming. `abandoned()` true ends a batch at
    the next token (every client of it has gone). `seeds` (one per prompt, None for unseeded) seed
    each prompt's sampling with a generator of its own; by default every prompt gets `params.seed`."""
    params = params or SamplingParams()
    batch_size = max(1, batch_size)
    order = list(range(len(prompts)))
    if sort_by_length:
        order.sort(key=lambda i: len(prompts[i]), reverse=True)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if seeds is None:
        seeds = [params.seed] * len(prompts)
    with tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress) as bar:
        for batch in batches:
            names = [adapter_names[i] for i in batch] if adapter_names is not None else None
            streamer = _RowStreamer(on_tokens, batch, loaded.is_seq2seq) if on_tokens else None
            outputs = _generate_batch(loaded, [prompts[i] for i in batch], params, add_special_tokens, max_input_tokens,
                                      names, streamer, abandoned, [seeds[i] for i in batch])
            bar.update(1)
            yield from zip(batch, outputs)


def _generate_batch(loaded, prompts: list[str], params: SamplingParams, add_special_tokens: bool | None,
                    max_input_tokens: int | None, adapter_names: list[str] | None = None,
                    streamer=None, abandoned: Callable[[], bool] | None = None,
                    seeds: list[int | None] | None = None) -> list[list[GeneratedText]]:
    model, tok, seq2seq = loaded.model, loaded.tokenizer, loaded.is_seq2seq
    eos = eos_ids(tok, model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos, default=None)
    # Tokenized without padding or truncation, then padded here: a fast tokenizer keeps those as
    # settings on its one shared backend, which a server thread counting a prompt's tokens at the
    # same moment switches off in the middle of this call.
    specials = seq2seq if add_special_tokens is None else add_special_tokens
    ids = tok(prompts, add_special_tokens=specials)["input_ids"]
    if not seq2seq and not specials:  # a rendered prompt: its BOS as in training (`with_bos`)
        ids = [with_bos(tok, row) for row in ids]
    if max_input_tokens:  # training's rule: a causal prompt keeps its end, an encoder's its start and </s>
        ids = [truncate_input(row, max_input_tokens, is_seq2seq=seq2seq, eos_id=tok.eos_token_id) for row in ids]
    enc = tok.pad({"input_ids": ids}, padding=True, padding_side=tok.padding_side if seq2seq else "left",
                  return_attention_mask=True, return_tensors="pt").to(model.device)
    copies = 1 if params.greedy else params.n  # greedy: every copy would be the same
    # use_cache: a model mid-training may have its KV cache switched off (gradient checkpointing does);
    # generating without it recomputes the whole sequence at every token
    kwargs = {"max_new_tokens": params.max_new_tokens, "num_return_sequences": copies, "pad_token_id": pad_id,
              "use_cache": True}
    if eos:
        kwargs["eos_token_id"] = sorted(eos)
    if params.greedy:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=params.temperature)
        kwargs.update({k: v for k, v in (("top_p", params.top_p), ("top_k", params.top_k)) if v is not None})
        if seeds and any(seed is not None for seed in seeds):
            kwargs["logits_processor"] = LogitsProcessorList([_SeededRows(seeds, copies)])
    start = 1 if seq2seq else enc["input_ids"].shape[1]  # where generated tokens begin
    stop_steps: dict[int, int] = {}  # row -> tokens generated when its stop string appeared
    criteria = []
    if params.stop:  # stop early to save time; the text is cut at the stop string below anyway
        criteria.append(_stop_in_generated(tok, params.stop, start, stop_steps))
    if abandoned is not None:
        criteria.append(_Abandoned(abandoned))
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    scope = nullcontext()
    if adapter_names is not None and len(set(adapter_names)) == 1:
        scope = _one_adapter(model, adapter_names[0])
    elif adapter_names is not None:  # PEFT: each row with its own adapter, one base model for all
        kwargs["adapter_names"] = [name for name in adapter_names for _ in range(copies)]
    if streamer is not None:
        streamer.copies = copies
        kwargs["streamer"] = streamer
    with torch.inference_mode(), scope:
        out = model.generate(**enc, **kwargs)
    tokens_in = enc["attention_mask"].sum(dim=1).tolist()
    results: list[list[GeneratedText]] = [[] for _ in prompts]
    for row, ids in enumerate(out[:, start:].tolist()):
        end = next((k for k, i in enumerate(ids) if i in eos), None)
        if end is not None:
            ids = ids[: end + 1]
        full = tok.decode(ids, skip_special_tokens=True)
        text = apply_stop(full, list(params.stop))
        stopped = end is not None or text != full
        # a row that stopped early is filled up with padding; one that did not generated every token.
        # Where the padding is the end-of-sequence token, what looks like an EOS after a stop string is
        # padding: the step the stop string appeared at counts.
        n_out = len(ids) if end is not None or not stopped else _last_non_pad(ids, pad_id) + 1
        if row in stop_steps:
            n_out = min(n_out, stop_steps[row])
        reason: FinishReason = "stop" if stopped else "length"
        results[row // copies].append(GeneratedText(text, tokens_in[row // copies], n_out, reason))
    return [outs * (params.n // copies) for outs in results]


@contextmanager
def _one_adapter(model, name: str):
    """A batch whose rows all use one adapter (or none) runs it as the active adapter: PEFT's
    mixed-batch path gathers and scatters every row at every LoRA layer, about 13% slower."""
    if name == BASE_ADAPTER:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(name, inference_mode=True)  # (without it PEFT makes the adapter trainable)
    yield


class _SeededRows(LogitsProcessor):
    """Samples the next token of each seeded prompt's rows with that prompt's own generator, and
    leaves `generate` only that token to pick: a seeded answer then depends on its seed alone, not
    on what else is in the batch (transformers draws every row from torch's one global RNG).
    Custom processors run after transformers' own, so the scores here are already warped
    (temperature, top-p, top-k). Rows without a seed are left to transformers' sampling."""

    def __init__(self, seeds: list[int | None], copies: int):
        self.seeds, self.copies = seeds, copies
        self.generators: dict[int, torch.Generator] = {}

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row in range(scores.shape[0]):
            prompt = row // self.copies  # a prompt's copies draw from its generator in turn
            if self.seeds[prompt] is None:
                continue
            if prompt not in self.generators:
                self.generators[prompt] = torch.Generator(device=scores.device).manual_seed(self.seeds[prompt])
            probs = torch.softmax(scores[row].float(), dim=-1)
            token = torch.multinomial(probs, 1, generator=self.generators[prompt])
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class _RowStreamer:
    """transformers' streamer protocol for a whole batch: hands each step's new token of every row
    to `callback(prompt indices, token ids)` (transformers' own text streamers take one row)."""

    def __init__(self, callback, indices: list[int], seq2seq: bool):
        self.callback, self.indices, self.copies = callback, indices, 1
        self._skip = not seq2seq  # a causal model's first `put` is the prompt itself

    def put(self, value) -> None:
        if self._skip:
            self._skip = False
            return
        ids = value.reshape(-1).tolist()
        if len(ids) == len(self.indices) * self.copies:
            self.callback([self.indices[row // self.copies] for row in range(len(ids))], ids)

    def end(self) -> None:
        pass


def _last_non_pad(ids: list[int], pad_id: int | None) -> int:
    return max((k for k, i in enumerate(ids) if i != pad_id), default=-1)


def context_length(model) -> int | None:
    """How many tokens the model's positions cover (prompt and answer together), when it says."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def eos_ids(tok, model) -> set[int]:
    """The tokenizer's end-of-sequence token and the generation config's (which may be several)."""
    ids = {tok.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


class _Abandoned(StoppingCriteria):
    """Ends the whole batch once nobody waits for it."""

    def __init__(self, abandoned: Callable[[], bool]):
        self.abandoned = abandoned

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.abandoned(), dtype=torch.bool, device=input_ids.device)


def _stop_in_generated(tokenizer, stop: Sequence[str], start: int, stop_steps: dict[int, int]):
    """Ends a row once its generated text holds a stop string, noting in `stop_steps` how many
    tokens it had generated then. transformers' own `stop_strings` also match a stop string that
    begins in the prompt, ending answers early where an OpenAI-compatible server, which looks at
    the completion only, would not."""
    stop = [s for s in stop if s]
    window = 4 * max(map(len, stop), default=1) + 4  # a just-completed stop string fits in its bytes' tokens

    class StopInGenerated(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, start:][:, -window:], skip_special_tokens=True)
            hits = [any(s in t for s in stop) for t in tails]
            for row in (r for r, hit in enumerate(hits) if hit):
                stop_steps.setdefault(row, input_ids.shape[1] - start)
            return torch.tensor(hits, device=input_ids.device)

    return StopInGenerated()


def model_fingerprint(ref: str) -> str:
    """'#' + a short hash of the resolved folder's file names, sizes and mtimes ('' for a hub id):
    text generated by a model folder retrained in place is not mistaken for the new model's."""
    from mentor.models import resolve

    folder = Path(resolve(ref))
    if not folder.is_dir():
        return ""
    files = sorted({p for pattern in _FINGERPRINTED for p in folder.glob(pattern)})
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return "#" + hashlib.sha256(repr(stats).encode()).hexdigest()[:12]
