"""Setting a model up for training, for every kind that trains one the way tuning does:
data validated and tokenized (loss on outputs only), the model loaded and wrapped with LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset
from transformers import set_seed

from mentor.data.encode import IGNORE, EncodeStats, encode
from mentor.data.formats import load_examples
from mentor.errors import MentorError
from mentor.models import LoadedModel, load_model, load_tokenizer, model_config
from mentor.models.quantize import bitsandbytes_problem, require_bitsandbytes
from mentor.training import memory
from mentor.training.arguments import liger_available, per_process_batch, use_bf16
from mentor.training.config import BNB_OPTIMIZERS, ExamplesGroup, FitConfig
from mentor.training.lora import apply_lora, lora_config

log = logging.getLogger("mentor")
EVAL_SIZE_RANGE = (10, 256)


@dataclass(frozen=True)
class Peeked:
    """The student before its weights load: its config (as `model.config`), tokenizer and kind, enough to
    tokenize the data and size the batch."""

    model: SimpleNamespace
    tokenizer: object
    is_seq2seq: bool


@dataclass
class Student:
    """The model being trained and what its recipe needs to know about it."""

    loaded: LoadedModel | Peeked  # Peeked until load_student loads the weights
    model: object  # the model to train (LoRA-wrapped when tuning is lora)
    bf16: bool
    use_chat_template: bool
    # the job's token limits as they apply to this model: within its context (see `fit_to_context`)
    max_input_tokens: int = 0
    max_output_tokens: int = 0
    memory: memory.Estimate | None = None  # made before the weights loaded
    gradient_checkpointing: bool = False  # the memory estimate's choice under `gradient_checkpointing: auto`

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


def load_student(cfg: ExamplesGroup, longest=None, rows_per_example: int = 1, logits_at_outputs: bool = True) -> Student:
    """The model to train, LoRA-wrapped if asked, with its bf16 and chat-template choices.

    Before any weights load, the switches are checked and the job's memory estimated at its longest
    batch: `longest(student)` gives the longest sequence, tokenizing the data with the student's
    tokenizer (its model not loaded yet); without it, the token limits are the bound."""
    set_seed(cfg.seed)
    check_switches(cfg)
    bf16 = use_bf16(cfg.bf16)
    dtype = weight_dtype(cfg, bf16)
    config = model_config(cfg.model)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    # the student as its tokenizer and config know it: enough to tokenize the data and size the batch
    peeked = Peeked(SimpleNamespace(config=config), load_tokenizer(cfg.model), is_seq2seq)
    use_chat_template = cfg.chat_template == "auto" and bool(getattr(peeked.tokenizer, "chat_template", None))
    max_input, max_output = fit_to_context(cfg.max_input_tokens, cfg.max_output_tokens, peeked)
    student = Student(peeked, None, bf16, use_chat_template, max_input, max_output)
    # the longest row, and the most output tokens of a row: tuning computes logits only where an
    # output token is predicted (white-box methods compare them at every position)
    found = longest(student) if longest else (max_input + max_output, max_output)
    tokens, outputs = found if isinstance(found, tuple) else (found, found)
    student.memory = fit_memory(cfg, config, is_seq2seq, per_process_batch(cfg.batch_size) * rows_per_example,
                                tokens, bf16, dtype, logit_tokens=outputs if logits_at_outputs else None)
    student.gradient_checkpointing = checkpointing(cfg, student.memory)
    loaded = load_model(cfg.model, dtype=dtype, quantization=cfg.quantization)
    # seeded again after loading: building or converting the model on its first use draws random
    # numbers, and the LoRA weights must not depend on whether the model was cached already
    set_seed(cfg.seed)
    student.loaded = loaded
    student.model = apply_lora(loaded.model, cfg, loaded.is_seq2seq) if cfg.tuning == "lora" else loaded.model
    return student


def longest_encoded(examples, student: Student) -> tuple[int, int]:
    """The longest of the examples once encoded for the student, and the most output tokens of one
    (tokens): what sizes the largest batch and its logits."""
    longest = outputs = 1
    for ex in examples:
        row = encode(ex, student.tokenizer, is_seq2seq=student.is_seq2seq, use_chat_template=student.use_chat_template,
                     max_input_tokens=student.max_input_tokens, max_output_tokens=student.max_output_tokens)
        longest = max(longest, len(row["input_ids"]), len(row["labels"]))
        outputs = max(outputs, sum(label != IGNORE for label in row["labels"]))
    return longest, outputs


def weight_dtype(cfg: FitConfig, bf16: bool) -> torch.dtype:
    """How the weights are held. LoRA trains small fp32 adapters, so the frozen base can live in
    bf16 (half the memory, and autocast need not re-cast every weight at every step). Full tuning
    holds bf16 weights (and so bf16 gradients and optimizer state) on a GPU that computes bf16, as
    the usual GPU recipes do; on CPU its weights stay fp32 (bf16 updates lose small steps)."""
    if bf16 and (cfg.tuning == "lora" or torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def check_switches(cfg: FitConfig) -> None:
    """Refuse, in one line and before anything loads, a switch this machine cannot honour."""
    if cfg.quantization != "none":
        require_bitsandbytes(f"quantization {cfg.quantization}")
    if cfg.optimizer in BNB_OPTIMIZERS:
        require_bitsandbytes(f"optimizer {cfg.optimizer}")
    if cfg.liger_kernel == "on" and not liger_available():
        raise MentorError("liger_kernel on needs a CUDA GPU and the liger-kernel package (pip install 'mentor[gpu]'); "
                          "use liger_kernel auto to use them where they are")


def fit_memory(cfg: FitConfig, config, is_seq2seq: bool, rows: int, tokens: int, bf16: bool, dtype: torch.dtype,
               weight_copies: int = 0, task_type: str | None = None,
               logit_tokens: int | None = None) -> memory.Estimate | None:
    """The job's memory estimate, logged, with gradient checkpointing decided; a one-line refusal when
    it does not fit (see `memory.plan`). None when the architecture cannot be built on the meta device."""
    # LoRA's parameters are counted for full tuning too: a refusal may suggest LoRA
    lora = lora_config(cfg, task_type or ("SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM"))
    try:
        shape = memory.shape_of(config, lora, is_seq2seq)
    except Exception as err:  # noqa: BLE001 - an architecture with its own code may not build on the meta device
        log.warning("no memory estimate for %s (%s: %s)", cfg.model, type(err).__name__, str(err).splitlines()[0][:200]
                    if str(err) else "")
        return None
    setting = memory.Setting(
        tuning=cfg.tuning, quantization=cfg.quantization,
        optimizer=cfg.optimizer, gradient_checkpointing=False, rows=rows, tokens=tokens,
        weight_bytes=2 if dtype == torch.bfloat16 else 4, activation_bytes=2 if bf16 else 4, weight_copies=weight_copies,
        logit_tokens=logit_tokens)
    estimate = memory.plan(shape, setting, cfg.gradient_checkpointing, cfg.model,
                           quantization_ok=bitsandbytes_problem() is None)
    log.info(estimate.line())
    for note in estimate.notes:
        log.info(note)
    return estimate


def checkpointing(cfg: FitConfig, estimate: memory.Estimate | None) -> bool:
    """Gradient checkpointing on or off: the job's choice, or under auto the estimate's."""
    setting = cfg.gradient_checkpointing
    if setting != "auto":
        return setting == "on"
    return bool(estimate and estimate.gradient_checkpointing)


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


def encode_all(examples, student: Student, cfg: ExamplesGroup, stats: EncodeStats | None = None) -> Dataset:
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


def load_tuning_data(cfg: ExamplesGroup):
    """Every training and evaluation example, validated before anything loads or trains."""
    train = load_examples(cfg.data, cfg.max_examples)
    evaluation = None
    if cfg.evaluation_data:
        evaluation = load_examples(cfg.evaluation_data, cfg.max_examples)
        check_eval_size(len(evaluation))
        if Path(cfg.data).resolve() == Path(cfg.evaluation_data).resolve():
            log.warning("the evaluation data is the training data: evaluation will not show overfitting, and "
                        "checkpoint selection and early stopping will favour memorisation")
    return train, evaluation


def encode_tuning_data(cfg: ExamplesGroup, student: Student, train, evaluation):
    """Tokenized datasets and truncation counts ({"train": ..., "eval": ...})."""
    stats = {"train": EncodeStats(), "eval": EncodeStats() if evaluation else None}
    train_ds = encode_all(train, student, cfg, stats["train"])
    eval_ds = encode_all(evaluation, student, cfg, stats["eval"]) if evaluation else None
    log.info("train data: %s", stats["train"].summary())
    if stats["eval"]:
        log.info("eval data: %s", stats["eval"].summary())
    return train_ds, eval_ds, stats
