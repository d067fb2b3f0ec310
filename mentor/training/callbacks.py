"""What a user watches while a job runs: metrics files, TensorBoard events, a progress bar."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import TrainerCallback

from mentor.errors import MentorError
from mentor.files import append_line, atomic_write

SKIP = {"epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}


class MetricsRecorder(TrainerCallback):
    """Writes every logged metric, under its own name, to metrics.jsonl and TensorBoard.

    On resume both are cut back to the checkpoint's step (TensorBoard's `purge_step`), so a
    resumed run leaves one clean curve, not two overlapping ones.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "metrics.jsonl"
        self.writer: SummaryWriter | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        step = state.global_step
        if self.path.exists():  # keep only what the checkpoint we resumed from had seen
            kept = [row for row in read_records(self.path) if row["step"] <= step]
            atomic_write(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self.writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=step if step else None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.writer is None or not logs:
            return
        row = {"step": state.global_step}
        for k, v in logs.items():
            if k in SKIP or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
                continue
            row[k] = v
            self.writer.add_scalar(k, v, state.global_step)
        if len(row) > 1:
            append_line(self.path, json.dumps(row))
            self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _record(line: str) -> dict | None:
    """A metrics line, or None for one a kill cut short."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def read_records(path: Path) -> list[dict]:
    """The complete rows of a metrics.jsonl: a line a kill cut short (or damaged bytes) is skipped."""
    return [row for row in map(_record, Path(path).read_text(errors="replace").splitlines()) if row]


class ProgressBar(TrainerCallback):
    """A progress bar that shows the latest loss and accuracy instead of printing every log."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="tuning", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        show = {}
        for mode in ("train", "eval"):
            if f"{mode}_total_loss" in logs:
                show[f"{mode}_loss"] = f"{logs[f'{mode}_total_loss']:.3f}"
                show[f"{mode}_acc"] = f"{logs[f'{mode}_fraction_of_correct_next_step_preds']:.3f}"
        if show:
            self.bar.set_postfix(show, refresh=False)
        if "eval_total_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval loss {logs['eval_total_loss']:.4f}, "
                           f"next-token accuracy {logs['eval_fraction_of_correct_next_step_preds']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JobCallback(TrainerCallback):
    """Ties training to the job's lifecycle: progress and training time in state.json, events
    (started or resumed, evaluation, checkpoint, early stop), and a cancel request honoured at the
    next step boundary with a checkpoint saved there."""

    def __init__(self, job):
        self.job = job
        self.started = 0.0
        self.base_seconds = 0.0
        self.cancelled = False

    def _seconds(self) -> float:
        return self.base_seconds + time.monotonic() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.base_seconds = self.job.train_seconds if state.global_step else 0.0
        self.job.update(step=state.global_step, total_steps=state.max_steps)
        if state.global_step:
            self.job.event("resumed", f"resumed from step {state.global_step}", step=state.global_step)
        else:
            self.job.event("training_started", f"training for up to {state.max_steps} steps", total_steps=state.max_steps)

    def _cancel_requested(self, device: torch.device) -> bool:
        """Rank 0 decides, for every rank: all processes must stop at the same step."""
        wanted = self.job.cancel_requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(wanted)], device=device)  # NCCL sends only what lives on the GPU
            torch.distributed.broadcast(flag, src=0)
            wanted = bool(flag.item())
        return wanted

    def on_step_end(self, args, state, control, **kwargs):
        self.job.update(step=state.global_step)
        if not self.cancelled and self._cancel_requested(args.device):
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True  # the last checkpoint is this step's
            self.job.event("cancel_requested", f"stopping at step {state.global_step}", step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # a loss gone to NaN or infinity never comes back: every later step trains garbage weights
        # (a learning rate far too high, say), so the job stops and fails here, naming the step
        for name, value in (logs or {}).items():
            if _is_training_loss(name) and isinstance(value, float) and not math.isfinite(value):
                self.job.event("diverged", f"training loss {name} is {value} at step {state.global_step}",
                               step=state.global_step)
                raise MentorError(f"training diverged: the loss ({name}) became {value} at step {state.global_step}; "
                                  "the weights are no longer usable, so the job stops: lower the learning rate "
                                  "(learning_rate_multiplier) and start the job in a new folder")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))
                 and not k.endswith(("runtime", "per_second"))}
        self.job.event("evaluation", "", step=state.global_step, metrics=shown)

    def on_save(self, args, state, control, **kwargs):
        # training time up to this checkpoint: a run resumed from it continues the count from here
        self.job.update(train_seconds=round(self._seconds(), 3))
        self.job.event("checkpoint", "", step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.job.update(train_seconds=round(self._seconds(), 3), step=state.global_step)
        if not self.cancelled and state.global_step < state.max_steps:
            self.job.event("early_stop", f"stopped early at step {state.global_step} of {state.max_steps}: the "
                           "evaluation metric stopped improving", step=state.global_step)


def _is_training_loss(name: str) -> bool:
    """A per-step training loss as each trainer logs it: mentor's `train_total_loss` (and a
    recipe's parts), TRL's `loss`; not an evaluation's, nor the run's average at the end."""
    return name == "loss" or (name.startswith("train_") and name.endswith("_loss") and name != "train_loss")
