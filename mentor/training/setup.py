"""Setting a model up for training, for every kind that trains one the way tuning does:
data validated and tokenized (loss on outputs only), the model loaded and wrapped with LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed

from mentor.data.encode import EncodeStats, encode
from mentor.data.formats import load_examples
from mentor.models import load_model
from mentor.training.arguments import use_bf16
from mentor.training.lora import apply_lora

log = logging.getLogger("mentor")
EVAL_SIZE_RANGE = (10, 256)


@dataclass
class Student:
    """The model being trained and what its recipe needs to know about it."""

    loaded: object  # mentor.models.LoadedModel: tokenizer, is_seq2seq, adapter, source
    model: object  # the model to train (LoRA-wrapped when tuning is lora)
    bf16: bool
    use_chat_template: bool
    # the job's token limits as they apply to this model: within its context (see `fit_to_context`)
    max_input_tokens: int = 0
    max_output_tokens: int = 0

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def attention(self) -> str | None:
        """The attention implementation the model runs ("sdpa", "flash_attention_2", "eager")."""
        return getattr(self.loaded.model.config, "_attn_implementation", None)

    @property
    def is_seq2seq(self) -> bool:
        return self.loaded.is_seq2seq


def load_student(cfg) -> Student:
    """The model to train, LoRA-wrapped if asked, with its bf16 and chat-template choices."""
    set_seed(cfg.seed)
    bf16 = use_bf16(cfg.bf16)
    # LoRA trains small fp32 adapters; the frozen base can live in bf16, which halves memory
    # and spares autocast from re-casting every weight at every step.
    dtype = torch.bfloat16 if (bf16 and cfg.tuning == "lora") else torch.float32
    loaded = load_model(cfg.model, dtype=dtype)
    # seeded again after loading: building or converting the model on its first use draws random
    # numbers, and the LoRA weights must not depend on whether the model was cached already
    set_seed(cfg.seed)
    use_chat_template = cfg.chat_template == "auto" and bool(getattr(loaded.tokenizer, "chat_template", None))
    model = apply_lora(loaded.model, cfg, loaded.is_seq2seq) if cfg.tuning == "lora" else loaded.model
    max_input, max_output = fit_to_context(cfg.max_input_tokens, cfg.max_output_tokens, loaded)
    return Student(loaded, model, bf16, use_chat_template, max_input, max_output)


# a tokenizer that knows no limit says so with a huge number (transformers' VERY_LARGE_INTEGER)
SANE_CONTEXT = 1 << 24


def context_of(loaded) -> int | None:
    """How many tokens the model reads at once: its config's positions, else its tokenizer's limit
    when that is a real one."""
    from mentor.serving.generate import context_length

    positions = context_length(loaded.model)
    if isinstance(positions, int) and positions > 0:
        return positions
    limit = getattr(loaded.tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < SANE_CONTEXT else None


def fit_to_context(max_input_tokens: int, max_output_tokens: int, loaded,
                   names: tuple[str, str] = ("max_input_tokens", "max_output_tokens")) -> tuple[int, int]:
    """The token limits within the model's context, with a warning when they are cut: beyond it an
    example trains on positions the model never learnt (or fails), while the truncation counts
    would say nothing was cut. A causal model reads input and output as one sequence, so their sum
    must fit (the output keeps up to half); an encoder-decoder reads the input alone."""
    context = context_of(loaded)
    if context is None:
        return max_input_tokens, max_output_tokens
    if loaded.is_seq2seq:
        max_input, max_output = min(max_input_tokens, context), max_output_tokens
    elif max_input_tokens + max_output_tokens <= context:
        max_input, max_output = max_input_tokens, max_output_tokens
    else:
        max_output = min(max_output_tokens, max(context // 2, 1))
        max_input = max(min(max_input_tokens, context - max_output), 1)
    if (max_input, max_output) != (max_input_tokens, max_output_tokens):
        log.warning("%s %d and %s %d do not fit the model's context of %d tokens: using %d and %d", names[0],
                    max_input_tokens, names[1], max_output_tokens, context, max_input, max_output)
    return max_input, max_output


def encode_all(examples, student: Student, cfg, stats: EncodeStats | None = None) -> Dataset:
    stats = stats if stats is not None else EncodeStats()
    rows = [encode(ex, student.tokenizer, is_seq2seq=student.is_seq2seq, use_chat_template=student.use_chat_template,
                   max_input_tokens=student.max_input_tokens, max_output_tokens=student.max_output_tokens, stats=stats)
            for ex in examples]
    return Dataset.from_list(rows)


def check_eval_size(n: int) -> None:
    lo, hi = EVAL_SIZE_RANGE
    if not lo <= n <= hi:
        log.warning("evaluation set has %d examples; %d to %d is recommended (fewer is noisy, more makes every "
                    "evaluation slow)", n, lo, hi)


def load_tuning_data(cfg):
    """Every training and evaluation example, validated before anything loads or trains."""
    train = load_examples(cfg.data, cfg.max_examples)
    evaluation = load_examples(cfg.evaluation_data, cfg.max_examples) if cfg.evaluation_data else None
    if evaluation is not None:
        check_eval_size(len(evaluation))
        if Path(cfg.data).resolve() == Path(cfg.evaluation_data).resolve():
            log.warning("the evaluation data is the training data: evaluation will not show overfitting, and "
                        "checkpoint selection and early stopping will favour memorisation")
    return train, evaluation


def encode_tuning_data(cfg, student: Student, train, evaluation):
    """Tokenized datasets and truncation counts ({"train": ..., "eval": ...})."""
    stats = {"train": EncodeStats(), "eval": EncodeStats() if evaluation else None}
    train_ds = encode_all(train, student, cfg, stats["train"])
    eval_ds = encode_all(evaluation, student, cfg, stats["eval"]) if evaluation else None
    log.info("train data: %s", stats["train"].summary())
    if stats["eval"]:
        log.info("eval data: %s", stats["eval"].summary())
    return train_ds, eval_ds, stats
