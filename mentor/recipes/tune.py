"""Supervised tuning recipe: full fine-tuning or LoRA on text or chat data.

setup: validate all data, load the model, tokenize (inputs and outputs truncated to their
       limits), wrap with LoRA; train: the Trainer with early stopping on eval next-token
       accuracy, a checkpoint at every evaluation, resume from the last complete one;
save:  the best (or last) model, tokenizer, curves, model card and a summary.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from transformers.trainer_callback import PrinterCallback

from mentor.config import TuneConfig
from mentor.data.encode import EncodeStats, encode
from mentor.data.formats import load_examples
from mentor.models import load_model
from mentor.recipes import common
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.plots import plot_curves
from mentor.training.trainer import MentorTrainer


def encode_all(examples, loaded, cfg, use_chat_template: bool) -> tuple[Dataset, EncodeStats]:
    stats = EncodeStats()
    rows = [encode(ex, loaded.tokenizer, is_seq2seq=loaded.is_seq2seq, use_chat_template=use_chat_template,
                   max_input_tokens=cfg.max_input_tokens, max_output_tokens=cfg.max_output_tokens, stats=stats)
            for ex in examples]
    return Dataset.from_list(rows), stats


def load_for_training(cfg: TuneConfig):
    """The model to train (LoRA-wrapped if asked), its loader result, bf16 and chat-template choices."""
    set_seed(cfg.seed)
    bf16 = common.use_bf16(cfg.bf16)
    # LoRA trains small fp32 adapters; the frozen base can live in bf16, which halves memory
    # and spares autocast from re-casting every weight at every step.
    dtype = torch.bfloat16 if (bf16 and cfg.tuning_method == "lora") else torch.float32
    loaded = load_model(cfg.model, dtype=dtype)
    use_chat_template = cfg.chat_template == "auto" and bool(getattr(loaded.tokenizer, "chat_template", None))
    model = loaded.model
    if cfg.tuning_method == "lora":
        model = common.apply_lora(model, cfg.adapter_size, cfg.lora_target_modules, loaded.is_seq2seq)
    return loaded, model, bf16, use_chat_template


def setup(cfg: TuneConfig):
    """Everything before the first step; all data problems surface here, before any training."""
    train_examples = load_examples(cfg.data, cfg.max_examples)
    eval_examples = load_examples(cfg.evaluation_data, cfg.max_examples) if cfg.evaluation_data else None
    if eval_examples is not None:
        common.check_eval_size(len(eval_examples))
    loaded, model, bf16, use_chat_template = load_for_training(cfg)
    train_ds, train_stats = encode_all(train_examples, loaded, cfg, use_chat_template)
    eval_ds, eval_stats = encode_all(eval_examples, loaded, cfg, use_chat_template) if eval_examples else (None, None)
    print(f"[mentor] train data: {train_stats.summary()}")
    if eval_stats:
        print(f"[mentor] eval data: {eval_stats.summary()}")
    return loaded, model, train_ds, eval_ds, use_chat_template, bf16, {"train": train_stats, "eval": eval_stats}


def tune(config: TuneConfig | None = None, **fields) -> common.TunedModel:
    """Tune a model; returns a handle to the result. Rerunning the same job resumes it."""
    cfg = config or TuneConfig(**fields)
    out = common.prepare_output(cfg.output, cfg.model_dump())
    if (done := common.finished_job(out)) is not None:
        return done

    loaded, model, train_ds, eval_ds, use_chat_template, bf16, enc_stats = setup(cfg)
    checkpoints = out / "checkpoints"
    resume = common.last_complete_checkpoint(checkpoints)
    if resume:
        print(f"[mentor] resuming from {resume}")

    trainer = MentorTrainer(
        model=model,
        args=common.training_arguments(cfg, checkpoints, eval_ds is not None, bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=common.collator(loaded.tokenizer, model),
        processing_class=loaded.tokenizer,
        callbacks=[MetricsRecorder(out), ProgressBar(), *common.callbacks_for(cfg, eval_ds is not None)],
        is_seq2seq=loaded.is_seq2seq,
        sampler_seed=cfg.seed,
    )
    trainer.remove_callback(PrinterCallback)  # the progress bar shows metrics; no dict per step
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    return save(cfg, out, trainer, loaded, use_chat_template, enc_stats, seconds)


def save(cfg, out: Path, trainer: MentorTrainer, loaded, use_chat_template: bool, enc_stats, seconds: float,
         method_name: str | None = None, extra: dict | None = None, meta_extra: dict | None = None,
         data_files: dict | None = None) -> common.TunedModel:
    """Write the selected model, curves, card and summary; then drop the checkpoints."""
    state = trainer.state
    best_step = state.best_global_step if cfg.checkpoint_selection and cfg.evaluation_data else None
    final_metrics = {}
    if trainer.eval_dataset is not None:
        # Score the model we hand over (best or last) so the summary describes exactly it.
        final_metrics.update(trainer.evaluate())
        final_metrics = {k: v for k, v in final_metrics.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
    train_logs = [h for h in state.log_history if "train_total_loss" in h]
    if train_logs:
        final_metrics.update({k: v for k, v in train_logs[-1].items()
                              if k.startswith("train_") and not k.endswith(("runtime", "per_second"))})

    meta = {"base_model": cfg.model, "method": method_name or cfg.method, "tuning": cfg.tuning_method, "use_chat_template": use_chat_template,
            "is_seq2seq": loaded.is_seq2seq, "max_input_tokens": cfg.max_input_tokens, **(meta_extra or {})}
    model_dir = out / "model"
    result = common.TunedModel(
        output=str(out), model_path=str(model_dir), base_model=cfg.model, method=method_name or cfg.method,
        best_step=best_step, steps_run=state.global_step, metrics=final_metrics,
        extra={"seconds": round(seconds, 1), "tokens_seen": int(state.num_input_tokens_seen),
               "tokens_per_second": round(state.num_input_tokens_seen / max(seconds, 1e-9), 1),
               "truncated": {k: vars(v) for k, v in enc_stats.items() if v is not None},
               "early_stopped": state.global_step < cfg.train_steps, **(extra or {})},
    )
    common.save_trained(trainer, model_dir, meta)  # collective under DDP/FSDP; files from the main process
    if not trainer.is_world_process_zero():
        return result
    if cfg.tuning_method == "lora" and cfg.merge_adapter:
        common.merge_adapter(model_dir, out / "merged")
    plot_curves(out / "metrics.jsonl", out / "curves.png", best_step, title=f"{result.method} on {cfg.model}")
    files = data_files or {"data": cfg.data, "evaluation_data": cfg.evaluation_data}
    hashes = {k: common.file_sha256(v) for k, v in files.items() if v}
    notes = [f"truncation: {k}: {v.summary()}" for k, v in enc_stats.items() if v is not None]
    common.model_card(out, result, cfg.model_dump(), hashes, notes)
    common.write_result(out, result)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    print("\n[mentor] done\n" + result.summary() + f"\ncurves: {out / 'curves.png'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return result
