"""Pieces every training recipe shares: output folder, resume, LoRA, Trainer arguments, saving.

A recipe (tune, distill, ...) reads top to bottom as setup / train / save and takes these
components from here, so all of them write the same folder layout:

    OUTPUT/model/          the tuned model, or the LoRA adapter, with its tokenizer
    OUTPUT/merged/         base + adapter merged (LoRA with merge_adapter)
    OUTPUT/checkpoints/    Trainer checkpoints while the job runs (removed when it ends)
    OUTPUT/metrics.jsonl, OUTPUT/tensorboard/, OUTPUT/curves.png
    OUTPUT/config.yaml, OUTPUT/README.md (model card), OUTPUT/result.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mentor.errors import MentorError
from mentor.result import TunedModel  # noqa: F401  (re-exported for recipes)

EVAL_SIZE_RANGE = (10, 256)


def use_bf16(setting: str) -> bool:
    """bf16 autocast where the hardware computes it natively (CUDA bf16, AVX512-BF16/AMX CPUs)."""
    if setting != "auto":
        return setting == "on"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_output(output: str | Path, config: dict) -> Path:
    """Create the output folder; refuse to mix a different job into one that holds a job."""
    out = Path(output)
    saved = out / "config.yaml"
    if saved.exists():
        previous = yaml.safe_load(saved.read_text())
        if previous != config:
            changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
            raise MentorError(f"{out} holds a different job (fields differ: {', '.join(changed)}); "
                              "use a new --output folder, or delete this one to start over")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, yaml.safe_dump(config, sort_keys=False))
    return out


def finished_job(out: Path) -> TunedModel | None:
    """The result of the job already finished in `out`, if any: rerunning a done job is a no-op."""
    if not (out / "result.json").exists():
        return None
    print(f"[mentor] {out} already holds this finished job")
    return TunedModel(**json.loads((out / "result.json").read_text()))


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _checkpoint_complete(d: Path) -> bool:
    """Trainer writes trainer_state.json last; a kill can still leave it half-written, and a kill
    during rotation can leave a folder whose weights are already deleted."""
    try:
        json.loads((d / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    has_weights = any((d / f).exists() for f in ("model.safetensors", "adapter_model.safetensors",
                                                  "model.safetensors.index.json", "pytorch_model.bin"))
    return has_weights and (d / "optimizer.pt").exists()


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was fully written; incomplete ones (killed mid-save) are removed."""
    if not folder.is_dir():
        return None
    found = []
    for d in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if not d.name.split("-")[-1].isdigit():
            continue
        if _checkpoint_complete(d):
            found.append((int(d.name.split("-")[-1]), d))
        else:
            print(f"[mentor] removing incomplete checkpoint {d}")
            shutil.rmtree(d, ignore_errors=True)
    return str(max(found)[1]) if found else None


def apply_lora(model, rank: int, target_modules, is_seq2seq: bool):
    """Wrap a model with LoRA adapters; 'all-linear' lets PEFT pick each architecture's layers."""
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=target_modules,
        task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, cfg)


def check_eval_size(n: int) -> None:
    lo, hi = EVAL_SIZE_RANGE
    if not lo <= n <= hi:
        warnings.warn(f"evaluation set has {n} examples; {lo} to {hi} is recommended "
                      f"(fewer is noisy, more makes every evaluation slow)", stacklevel=2)
        print(f"[mentor] warning: evaluation set has {n} examples; {lo} to {hi} is recommended")


def training_arguments(cfg, checkpoints: Path, has_eval: bool, bf16: bool, **overrides) -> TrainingArguments:
    """Trainer arguments from job parameters: a checkpoint at every evaluation, best one kept."""
    select = has_eval and cfg.checkpoint_selection
    args = dict(
        output_dir=str(checkpoints),
        max_steps=cfg.train_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(cfg.warmup_ratio * cfg.train_steps),
        weight_decay=0.0,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.evaluation_interval,
        save_strategy="steps",
        save_steps=cfg.evaluation_interval,
        save_total_limit=2 if select else 1,
        load_best_model_at_end=select,
        metric_for_best_model="eval_fraction_of_correct_next_step_preds" if has_eval else None,
        greater_is_better=True,
        bf16=bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        prediction_loss_only=True,
        restore_callback_states_from_checkpoint=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",  # compute spent, reported with the result
    )
    args.update(overrides)
    return TrainingArguments(**args)


def callbacks_for(cfg, has_eval: bool) -> list:
    if has_eval and cfg.early_stopping:
        return [EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_min_delta)]
    return []


def collator(tokenizer, model):
    """Pads input ids, attention mask and labels (with -100) to the longest in the batch."""
    return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=-100, padding=True)


def save_model(model, tokenizer, folder: Path, meta: dict) -> None:
    """Save model or adapter with its tokenizer, and what mentor needs to load and prompt it."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "mentor_model.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def save_trained(trainer, folder: Path, meta: dict) -> None:
    """The trainer's model (best or last) with its tokenizer, written whole before it appears.

    `Trainer.save_model` gathers sharded weights (FSDP, DeepSpeed) and writes from the main
    process only, so every rank calls this."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        (tmp / "mentor_model.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    trainer.accelerator.wait_for_everyone()


def merge_adapter(adapter_folder: Path, target: Path) -> None:
    """Base (reloaded in float32) + adapter, merged into one plain model folder."""
    from mentor.models import load_model

    loaded = load_model(str(adapter_folder), dtype=torch.float32)
    merged = loaded.model.merge_and_unload()
    meta = json.loads((adapter_folder / "mentor_model.json").read_text())
    save_model(merged, loaded.tokenizer, target, {**meta, "merged_from": str(adapter_folder)})


def card_body(result: TunedModel, cfg: dict, data_hashes: dict) -> str:
    """The part every model card shares: data hashes, metrics, parameters, curves."""
    params = "\n".join(f"| `{k}` | {v} |" for k, v in cfg.items())
    metrics = "\n".join(f"| `{k}` | {v:.4f} |" if isinstance(v, float) else f"| `{k}` | {v} |" for k, v in result.metrics.items())
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


def model_card(out: Path, result: TunedModel, cfg: dict, data_hashes: dict, notes: list[str]) -> None:
    text = f"""# Tuned model: {result.method} on {result.base_model}

Made by mentor. Load it with `mentor predict {result.output} "your input"` or
`mentor.serving.Predictor("{result.output}")`.

- base model: `{result.base_model}`
- method: {result.method}
- steps run: {result.steps_run}; best eval step: {result.best_step}
- model files: `{result.model_path}`

{card_body(result, cfg, data_hashes)}
{chr(10).join('- ' + n for n in notes)}
"""
    atomic_write(out / "README.md", text)


def write_result(out: Path, result: TunedModel) -> None:
    atomic_write(out / "result.json", json.dumps(asdict(result), indent=2))
