"""The setup every preference recipe shares: its data checked, the starting model (an adapter
merged first), the renderer of its prompts, and what is left beside the saved policy."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mentor.errors import MentorError
from mentor.model_record import ModelRecord
from mentor.models import load_model, model_config, resolve
from mentor.models.resolve import base_reference
from mentor.rlhf.config import DPOConfig, PreferenceTrainingGroup, RLHFConfig
from mentor.rlhf.render import Renderer
from mentor.training.config import TrainingGroup
from mentor.training.outputs import save_model

log = logging.getLogger("mentor")


@dataclass
class Fit:
    """The memory estimate of a preference job, made before its model loads, and what it decided."""

    estimate: object  # mentor.training.memory.Estimate, or None
    checkpointing: bool
    dtype: torch.dtype  # how the policy's weights are held

    def record(self) -> dict | None:
        from mentor.training.outputs import memory_record

        return memory_record(self.estimate)


def fit(cfg: TrainingGroup, rows_per_example: int, tokens: int, weight_copies: int = 0, task_type: str = "CAUSAL_LM",
        pairs: list | None = None) -> Fit:
    """Check the job's switches and estimate its memory at a batch of `rows_per_example` sequences
    per example (2 for a preference pair, the completions per prompt in RL) of `tokens` (the job's
    limits, cut to the model's context and, with `pairs`, to the longest pair of the data: batches
    are padded to their longest pair, not to the limits) before any weights load; a one-line refusal
    when it does not fit. `weight_copies`: frozen models of the same size beside the policy (a full
    tuning's reference model, the reward model). A reward model computes no vocabulary logits."""
    from mentor.training import setup
    from mentor.training.arguments import per_process_batch, use_bf16

    setup.check_switches(cfg)
    bf16 = use_bf16(cfg.bf16)
    # on CPU the weights stay fp32 as before (bf16 autocast computes); on a bf16 GPU full tuning holds bf16
    dtype = setup.weight_dtype(cfg, bf16) if torch.cuda.is_available() else torch.float32
    config = model_config(cfg.model)
    rows = per_process_batch(cfg.batch_size) * rows_per_example
    context = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config,
                      "max_position_embeddings", None)
    tokens = min(tokens, context) if isinstance(context, int) and context > 0 else tokens
    if pairs:
        tokens = min(tokens, longest_pair(pairs, cfg.model))
    estimate = setup.fit_memory(cfg, config, False, rows, tokens, bf16, dtype, weight_copies, task_type,
                                logit_tokens=0 if task_type == "SEQ_CLS" else None)
    return Fit(estimate, setup.checkpointing(cfg, estimate), dtype)


def trainable_in_fp32_without_autocast(trainer) -> None:
    """TRL's preference trainers cast a quantized model's trainable weights to bf16 (QLoRA's recipe),
    which only computes under bf16 autocast: where training runs in fp32 (a CPU without native bf16)
    a reward model's bf16 score head met fp32 hidden states and the step failed. There they go back
    to fp32, before the optimizer is made."""
    if trainer.args.bf16:
        return
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()


# what a chat template adds around a prompt and an answer, at most, in tokens
TEMPLATE_TOKENS = 64


def longest_pair(pairs: list, model: str) -> int:
    """The most tokens a rendered preference pair can take (its prompt and its longer answer, plus
    what a chat template adds), from the model's tokenizer alone."""
    from mentor.models import load_tokenizer

    tokenizer = load_tokenizer(model)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True).input_ids)

    return max((sum(count(m.get("content") or "") for m in p.prompt.messages) + max(count(p.chosen), count(p.rejected))
                for p in pairs), default=1) + TEMPLATE_TOKENS


def start(cfg: PreferenceTrainingGroup | DPOConfig, out: Path, max_prompt_tokens: int, max_answer_tokens: int,
          names: tuple[str, str] = ("prompt_sequence_length", "target_sequence_length"), fitted: Fit | None = None):
    """The starting model (seeded, a LoRA adapter merged first) and the renderer of its prompts:
    (loaded, base_ref, renderer). The renderer's limits are the job's, cut to the model's context
    (`names`: the fields that set them, for the warning). With `fitted`, the model is held as it says
    and quantized as the job asks."""
    from transformers import set_seed

    from mentor.training.setup import fit_to_context

    set_seed(cfg.seed)
    if fitted is None:
        loaded, base_ref = load_start_model(cfg.model, out)
    else:
        loaded, base_ref = load_start_model(cfg.model, out, fitted.dtype, cfg.quantization)
    max_prompt_tokens, max_answer_tokens = fit_to_context(max_prompt_tokens, max_answer_tokens, loaded, names)
    renderer = Renderer.for_model(loaded.tokenizer, cfg.chat_template, cfg.instruction, max_prompt_tokens,
                                  max_answer_tokens)
    return loaded, base_ref, renderer


def finish_policy(cfg: RLHFConfig | DPOConfig, out: Path, model_dir: Path, base_ref: str) -> None:
    """After a policy is saved (rank 0): its base recorded beside an adapter, the merged copy if asked,
    and the merged starting model removed when nothing refers to it."""
    from mentor.training.outputs import merge_adapter

    write_meta(model_dir, base_ref)
    if cfg.tuning == "lora" and cfg.merge_adapter:
        merge_adapter(model_dir, out / "merged")
    if base_ref == cfg.model or cfg.tuning == "full":
        shutil.rmtree(out / "start_model", ignore_errors=True)


def load_pairs(cfg: TrainingGroup, train: str, evaluation: str | None):
    """Training and held-out preference pairs, validated before any model loads."""
    from mentor.rlhf.data import load_preferences
    from mentor.training.setup import check_eval_size

    pairs = load_preferences(train, cfg.max_examples)
    held_out = load_preferences(evaluation, cfg.max_examples) if evaluation else None
    if held_out is not None:
        check_eval_size(len(held_out))
    return pairs, held_out


@contextmanager
def known_warnings():
    """Silence what TRL and transformers print that a user can do nothing about: deprecation notices
    from inside them, and a progress bar for each of TRL's passes over a dataset already in memory."""
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
            yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def load_start_model(ref: str, out: Path, dtype=torch.float32, quantization: str = "none"):
    """The model a preference recipe starts from (and stays close to).

    A LoRA adapter (say, a supervised tuning output) is merged into its base and saved to
    OUTPUT/start_model, so the reference model and any new adapter have a plain folder to refer to.
    Returns (loaded, base_ref) where base_ref is what a new adapter's base is recorded as. With
    `quantization`, the model trained on is loaded quantized (an adapter is merged unquantized first).
    """
    is_adapter = base_reference(resolve(ref)) is not None
    loaded = load_model(ref, dtype=dtype, quantization="none" if is_adapter else quantization)
    if loaded.is_seq2seq:
        raise MentorError(f"model '{ref}' is an encoder-decoder (seq2seq) model; reward models, RLHF and DPO "
                          "need a decoder-only (causal) model")
    if loaded.adapter is None:
        return loaded, ref
    folder = out / "start_model"
    if not (folder / "config.json").exists():
        log.info("merging the adapter %s into its base: %s", loaded.adapter, folder)
        merged = loaded.model.merge_and_unload()
        save_model(merged, loaded.tokenizer, folder, ModelRecord(base_model=ref, merged_from=loaded.adapter))
    return load_model(str(folder), dtype=dtype, quantization=quantization), str(folder)


def write_meta(folder: Path, base_ref: str) -> None:
    """Beside a LoRA adapter: the user's reference of its base, which the resolver prefers."""
    if (folder / "adapter_config.json").exists():
        path = Path(base_ref).expanduser()
        ref = str(path.resolve()) if path.exists() else base_ref  # a folder survives a change of directory
        (folder / "mentor_base.json").write_text(json.dumps({"base_model": ref}))
