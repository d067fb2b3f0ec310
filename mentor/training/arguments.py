"""One builder of trainer arguments for every kind, for transformers' Trainer and TRL's trainers
alike (TRL's configs extend TrainingArguments): a checkpoint at every evaluation, logs every step,
the best checkpoint kept when selection is on."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, EarlyStoppingCallback, TrainingArguments

from mentor.errors import MentorError
from mentor.training.config import PackingGroup, ScheduleGroup, SelectionGroup, TrainingGroup

log = logging.getLogger("mentor")

ACCURACY = "eval_fraction_of_correct_next_step_preds"


def use_bf16(setting: str) -> bool:
    """bf16 autocast where the hardware computes it natively (CUDA bf16, AVX512-BF16/AMX CPUs)."""
    if setting != "auto":
        return setting == "on"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def liger_available() -> bool:
    """Liger's Triton kernels run on CUDA, with the liger-kernel package installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def training_arguments(cfg: TrainingGroup, checkpoints: Path, has_eval: bool, bf16: bool,
                       config_cls=TrainingArguments, *, steps: int | None = None, learning_rate: float | None = None,
                       batch_size: int | None = None, best_metric: str = ACCURACY, greater_is_better: bool = True,
                       checkpointing: bool | None = None, **overrides) -> TrainingArguments:
    """Arguments from a job's config; `steps` defaults to its `train_steps` (a kind of one stage, with the
    schedule group; a stage of the preference kinds names its own), `learning_rate` to the kind's rate,
    `batch_size` to its batch; `checkpointing` is gradient checkpointing as the memory estimate decided
    it (default: the config's `gradient_checkpointing` is on). Evaluation decides what is kept only in a
    kind with the selection group."""
    if checkpointing is None:
        checkpointing = cfg.gradient_checkpointing == "on"
    if steps is None:
        if not isinstance(cfg, ScheduleGroup):
            raise TypeError(f"{type(cfg).__name__} has no train_steps: give the stage's steps")
        steps = cfg.train_steps
    batch_size = batch_size or cfg.batch_size
    selection = cfg if isinstance(cfg, SelectionGroup) else None
    select = has_eval and selection is not None and selection.checkpoint_selection
    # early stopping watches the metric whether or not the best checkpoint is kept; kinds with
    # neither (reward model, RLHF) report no such metric, so none is named
    watched = select or (has_eval and selection is not None and selection.early_stopping)
    asked = [name for name, on in (("checkpoint_selection", selection.checkpoint_selection),
                                   ("early_stopping", selection.early_stopping)) if on] if selection else []
    if asked and not has_eval:
        log.info("no evaluation data: %s %s it, so the last step's model is the result",
                 " and ".join(a.replace("_", " ") for a in asked), "needs" if len(asked) == 1 else "need")
    per_device = per_process_batch(batch_size)
    # the keywords of whichever config class the kind trains with (TrainingArguments or a TRL config)
    args: dict[str, Any] = dict(
        output_dir=str(checkpoints),
        max_steps=steps,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        learning_rate=learning_rate or cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(cfg.warmup_ratio * steps),
        weight_decay=0.0,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.evaluation_interval,
        save_strategy="steps",
        save_steps=cfg.evaluation_interval,
        save_total_limit=None if selection and selection.keep_checkpoints else 2 if select else 1,
        load_best_model_at_end=select,
        metric_for_best_model=best_metric if watched else None,
        greater_is_better=greater_is_better,
        bf16=bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        restore_callback_states_from_checkpoint=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        # TRL turns checkpointing on by default; it is the job's (or its memory estimate's) choice here,
        # since a model that fits without it trains about a third faster
        activation_checkpointing=checkpointing,
        # non-reentrant: the recommended kind, and the one that needs no input gradients under LoRA
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        optim=cfg.optimizer,
        torch_compile=cfg.torch_compile,
        use_liger_kernel=cfg.liger_kernel != "off" and liger_available(),
    )
    if config_cls is TrainingArguments:
        # a packed row has no padding and no attention mask: every token counts ("non_padding" would
        # count the tokens that are not the pad id, leaving out each end-of-sequence token where a
        # tokenizer pads with it, as Llama 3's and Mistral's do under mentor)
        tokens_seen = "all" if isinstance(cfg, PackingGroup) and cfg.packing else "non_padding"
        args.update(prediction_loss_only=True, remove_unused_columns=False, include_num_input_tokens_seen=tokens_seen)
    args.update(overrides)
    return config_cls(**args)


def per_process_batch(batch_size: int) -> int:
    """A job's batch size is the examples of one step, however many processes (torchrun, accelerate)
    share it: each takes its part, so a step and the learning rate mean the same on 1 or 8 devices."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % processes:
        raise MentorError(f"batch_size {batch_size} cannot be shared evenly by {processes} processes; give a "
                          f"multiple of {processes}")
    return batch_size // processes


def early_stopping(cfg: SelectionGroup, has_eval: bool) -> list:
    if has_eval and cfg.early_stopping:
        return [EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_min_delta)]
    return []


def collator(tokenizer, packing: bool = False, is_seq2seq: bool = False, attention: str | None = None):
    """Pads input ids, attention mask and labels (with -100) to the longest in the batch; with
    ``packing``, puts the batch's examples in one row instead (no padding computed): positions
    restart at each example, so attention stays within it (a block-diagonal mask under SDPA and
    eager, variable-length kernels under flash attention), and each example's first label is -100
    so no token learns to predict the next example."""
    if not packing:
        return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=-100, padding=True)
    if is_seq2seq:
        raise MentorError("packing needs a decoder-only model: an encoder-decoder's examples cannot share a row")
    flash = bool(attention) and attention.startswith("flash")
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=flash)
