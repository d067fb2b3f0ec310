"""What every training kind leaves in its job folder, written the same way for all of them:

    OUTPUT/model/          the tuned model, or the LoRA adapter, with its tokenizer and its ModelRecord
    OUTPUT/merged/         base + adapter merged (LoRA with merge_adapter)
    OUTPUT/checkpoints/    Trainer checkpoints while the job runs (removed when it succeeds)
    OUTPUT/metrics.jsonl, OUTPUT/tensorboard/, OUTPUT/curves.png
    OUTPUT/README.md       the model card

Under DDP/FSDP/DeepSpeed every rank takes part in gathering the weights and only rank 0 writes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mentor.files import atomic_folder, atomic_write
from mentor.jobs import Job, TunedModel, produces
from mentor.model_record import ModelRecord
from mentor.training.config import FitConfig, MergeGroup, ScheduleGroup, SelectionGroup
from mentor.training.plots import plot_curves

log = logging.getLogger("mentor")


def save_model(model, tokenizer, folder: Path, record: ModelRecord) -> None:
    """Save a model or adapter with its tokenizer, and what mentor needs to load and prompt it."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record.write(tmp)


def save_trained(trainer, folder: Path, record: ModelRecord, merge: bool = False) -> None:
    """The trainer's model (best or last) with its tokenizer, written whole before it appears.

    Every rank calls this: `Trainer.save_model` gathers sharded weights and writes from the main
    process only. With `merge`, a LoRA model is saved with its adapter merged into the base."""
    main = trainer.is_world_process_zero()
    if merge:
        if main:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_model(model.merge_and_unload() if hasattr(model, "merge_and_unload") else model,
                       trainer.processing_class, folder, record)
    else:
        tmp = folder.with_name(f".{folder.name}.tmp")
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(str(tmp))
        if main:
            record.write(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    trainer.accelerator.wait_for_everyone()


def merge_adapter(adapter_folder: Path, target: Path) -> None:
    """Base (reloaded in float32) + adapter, merged into one plain model folder."""
    from peft import PeftModel

    from mentor.models import load_model

    loaded = load_model(str(adapter_folder), dtype=torch.float32)
    if not isinstance(loaded.model, PeftModel):
        raise TypeError(f"{adapter_folder} holds no LoRA adapter to merge")
    merged = loaded.model.merge_and_unload()
    record = ModelRecord.read(adapter_folder) or ModelRecord()
    save_model(merged, loaded.tokenizer, target, record.model_copy(update={"merged_from": str(adapter_folder)}))


def memory_record(estimate) -> dict | None:
    """The memory estimate made before the weights loaded, beside the peak this process reached."""
    from mentor.training.memory import GiB, peak_memory

    if estimate is None:
        return None
    peak = peak_memory()
    return {**estimate.as_dict(), "measured_peak_gib": round(peak / GiB, 3) if peak else None}


def final_metrics(trainer) -> dict:
    """The handed-over model (best or last) re-scored on the eval set, and the last train metrics."""
    metrics = {}
    if trainer.eval_dataset is not None:
        metrics.update({k: v for k, v in trainer.evaluate().items()
                        if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))})
    train_logs = [h for h in trainer.state.log_history if "train_total_loss" in h]
    if train_logs:
        metrics.update({k: v for k, v in train_logs[-1].items()
                        if k.startswith("train_") and not k.endswith(("runtime", "per_second"))})
    return metrics


def card_body(result: TunedModel, cfg: dict, data_hashes: dict) -> str:
    """The part every model card shares: data hashes, metrics, parameters, curves."""
    params = "\n".join(f"| `{k}` | {v} |" for k, v in cfg.items())
    metrics = "\n".join(f"| `{k}` | {v:.4f} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                        for k, v in result.metrics.items())
    hashes = "\n".join(f"- `{k}`: sha256 `{v}`" for k, v in data_hashes.items())
    return f"""## Data
{hashes}

## Metrics
| metric | value |
|---|---|
{metrics}

## Parameters
| field | value |
|---|---|
{params}

![training curves](curves.png)
"""


def model_card(job: Job, result: TunedModel, notes: list[str], title: str | None = None, intro: str | None = None) -> None:
    """README.md of the job folder: what the model is, how it was made, how to use it."""
    intro = intro or (f"Made by mentor. Load it with `mentor predict {result.output} \"your input\"` or "
                      f"`mentor.serving.Predictor(\"{result.output}\")`.")
    text = f"""# {title or f"Tuned model: {result.described} on {result.base_model}"}

{intro}

- job kind: {job.kind}
- base model: `{result.base_model}`
- tuning: {result.tuning}
- steps run: {result.steps_run}; best eval step: {result.best_step}
- model files: `{result.model_path}`

{card_body(result, job.config.model_dump(), job.state.get("inputs", {}))}
{chr(10).join('- ' + n for n in notes)}
"""
    atomic_write(job.folder / "README.md", text)


@dataclass
class Card:
    """A model card's own words, where a kind's differ from a tuned model's (a reward model's)."""
    title: str | None = None
    intro: str | None = None


@dataclass
class Before:
    """Held-out metrics before the first step, shown against the end's in the final summary."""
    on: str  # what they were measured on: 'held-out pairs'
    metrics: dict
    shown: tuple[str, ...]  # the metrics worth a line


def finish(job: Job, trainer, record: ModelRecord, *, metrics: dict, best_step: int | None = None,
           extra: dict | None = None, notes: list[str] | None = None, keep_checkpoints: bool = False,
           after_save: Callable[[Path], None] | None = None, plot: Callable[[TunedModel], None] | None = None,
           card: Card | None = None, temporary: tuple[Path, ...] = (), before: Before | None = None,
           tensorboard: Path | None = None) -> TunedModel:
    """The end of every kind that trains: the model folder (weights and its record), the result, the
    curves, the model card, the temporary files removed once the job succeeds, and one final log
    line. What the kind produces (its registry entry) decides the folder: a model or its LoRA
    adapter, or a reward model as one plain folder (an adapter merged in, so anything that loads a
    sequence classifier reads it). The kind passes what differs: its record's fields, its metrics,
    what it adds after saving (`after_save`, rank 0), its curves (`plot`), notes for its card, and
    the TensorBoard folder to show when its stages log in folders of their own (RLHF's).
    Every rank calls this (saving gathers sharded weights); only rank 0 writes the rest."""
    cfg, out = job.config, job.folder
    if not isinstance(cfg, FitConfig):
        raise TypeError(f"{job.kind}: {type(cfg).__name__} is not a training kind's config (a model and its tuning)")
    if best_step:
        job.event("best_checkpoint", f"best evaluation at step {best_step}: its checkpoint is the result",
                  step=best_step)
    model_dir = out / "model"
    # one format for every kind: the kind names the method, the tuning is a field of its own
    record = record.model_copy(update={"kind": job.kind, "base_model": cfg.model, "method": job.kind,
                                       "tuning": cfg.tuning})
    save_trained(trainer, model_dir, record, merge=produces(job.kind) == "reward-model" and cfg.tuning == "lora")
    result = TunedModel(output=str(out), model_path=str(model_dir), base_model=cfg.model, method=job.kind,
                        best_step=best_step, steps_run=trainer.state.global_step, metrics=metrics,
                        extra={"seconds": round(job.train_seconds, 1), **(extra or {})}, kind=job.kind,
                        tuning=cfg.tuning)
    if not job.main:
        return result
    if after_save:
        after_save(model_dir)
    if plot:
        plot(result)
    else:
        plot_curves(out / "metrics.jsonl", out / "curves.png", best_step, title=f"{result.described} on {cfg.model}")
    model_card(job, result, notes or [], **vars(card or Card()))
    if not keep_checkpoints:
        job.on_success(lambda: shutil.rmtree(out / "checkpoints", ignore_errors=True))
    for path in temporary:  # bound now: the loop variable moves on before the job succeeds
        job.on_success(lambda path=path: shutil.rmtree(path, ignore_errors=True) if path.is_dir()
                       else path.unlink(missing_ok=True))
    compared = [f"  {k}: {before.metrics[k]:.4f} -> {metrics[k]:.4f}" for k in before.shown
                if k in before.metrics and k in metrics] if before else []
    log.info("done\n%s%s\ncurves: %s\nTensorBoard: tensorboard --logdir %s", result.summary(),
             f"\non {before.on}, before -> after:\n" + "\n".join(compared) if before and compared else "",
             out / "curves.png",
             tensorboard or out / "tensorboard")
    return result


def save_tuned(job: Job, trainer, student, enc_stats: dict, *, record_fields: dict | None = None,
               extra: dict | None = None, notes: list[str] | None = None) -> TunedModel:
    """The end of every kind that trains like tuning (tune, distill, white-box): the selected model,
    with what a tuned student adds to `finish`. `record_fields` are what the kind adds to the
    model's record (ModelRecord's fields)."""
    cfg, state = job.config, trainer.state
    if not (isinstance(cfg, ScheduleGroup) and isinstance(cfg, SelectionGroup) and isinstance(cfg, MergeGroup)):
        raise TypeError(f"{job.kind}: {type(cfg).__name__} does not train like tuning (steps, selection, merging)")
    seconds = job.train_seconds
    extra = {"tokens_seen": int(state.num_input_tokens_seen),
             "tokens_per_second": round(state.num_input_tokens_seen / max(seconds, 1e-9), 1),
             "truncated": {k: v.truncation() for k, v in enc_stats.items() if v is not None},
             "early_stopped": state.global_step < cfg.train_steps,
             # the limits trained with: the job's, cut to the model's context when they exceeded it
             "token_limits": {"max_input_tokens": student.max_input_tokens,
                              "max_output_tokens": student.max_output_tokens},
             "memory": memory_record(getattr(student, "memory", None)), **(extra or {})}
    record = ModelRecord(use_chat_template=student.use_chat_template, is_seq2seq=student.is_seq2seq,
                         # how a plain prompt is rendered without a chat template: as the data was
                         prompt_format="chat" if enc_stats["train"].conversations else "text",
                         max_input_tokens=student.max_input_tokens, **(record_fields or {}))
    notes = [f"truncation: {k}: {v.summary()}" for k, v in enc_stats.items() if v is not None] + (notes or [])
    merge = cfg.tuning == "lora" and cfg.merge_adapter
    return finish(job, trainer, record, metrics=final_metrics(trainer), extra=extra, notes=notes,
                  best_step=state.best_global_step if trainer.args.load_best_model_at_end else None,  # selection on
                  keep_checkpoints=cfg.keep_checkpoints,
                  after_save=(lambda model_dir: merge_adapter(model_dir, job.folder / "merged")) if merge else None)
