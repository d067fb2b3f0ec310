"""Metrics of the preference recipes: TRL's names turned into mentor's, recorded (metrics.jsonl,
TensorBoard), shown on the progress bar, measured before and after training, and drawn."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from tqdm.auto import tqdm

from mentor.rlhf.setup import known_warnings
from mentor.training.callbacks import MetricsRecorder, ProgressBar, read_records
from mentor.training.plots import read_metrics, save_figure

# TRL's metric names -> mentor's, per recipe; train metrics get "train_", eval ones "eval_".
REWARD_MODEL_METRICS = {"loss": "reward_model_loss", "accuracy": "reward_model_accuracy", "margin": "reward_margin",
                        "mean_reward": "mean_reward", "min_reward": "min_reward", "max_reward": "max_reward"}
RL_METRICS = {"loss": "policy_loss", "reward": "mean_reward", "reward_std": "reward_std", "kl": "kl",
              "entropy": "entropy", "completions/mean_length": "mean_completion_length",
              "completions/clipped_ratio": "clipped_completion_ratio", "frac_reward_zero_std": "frac_reward_zero_std"}
DPO_METRICS = {"loss": "dpo_loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
               "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward",
               "logps/chosen": "chosen_logp", "logps/rejected": "rejected_logp", "entropy": "entropy"}
KEEP_AS_IS = ("grad_norm", "learning_rate")

log = logging.getLogger("mentor")


def rename(logs: dict, names: dict[str, str]) -> dict:
    """TRL's logged metrics under mentor's names; anything unnamed is left out."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            continue
        if key in KEEP_AS_IS:
            out[key] = value
        elif key.startswith("eval_") and key[5:] in names:
            out["eval_" + names[key[5:]]] = value
        elif key in names:
            out["train_" + names[key]] = value
    for mode in ("train", "eval"):  # DPO: how much likelier the chosen answer is than the rejected one
        if f"{mode}_chosen_logp" in out and f"{mode}_rejected_logp" in out:
            out[f"{mode}_logprob_margin"] = out[f"{mode}_chosen_logp"] - out[f"{mode}_rejected_logp"]
    return out


class RenamedMetricsRecorder(MetricsRecorder):
    """metrics.jsonl and TensorBoard under mentor's names; `initial` rows (step 0, before training) first."""

    def __init__(self, folder: Path, names: dict[str, str], initial: dict | None = None):
        super().__init__(folder)
        self.names = names
        self.initial = initial or {}

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.writer is None:  # not the main process: it neither reads nor writes the metrics
            return
        # tolerant of a torn last line: a resumed run may find what a kill left mid-line
        seen = self.path.exists() and any(row["step"] == 0 for row in read_records(self.path))
        if self.initial and state.global_step == 0 and not seen:
            row = {"step": 0, **self.initial}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            for k, v in self.initial.items():
                self.writer.add_scalar(k, v, 0)
            self.writer.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=rename(logs or {}, self.names), **kwargs)


class MetricsProgressBar(ProgressBar):
    """The progress bar with the recipe's own headline metrics."""

    def __init__(self, names: dict[str, str], show: list[str], desc: str):
        super().__init__()
        self.names, self.show, self.desc = names, show, desc

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            dynamic_ncols=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        named = rename(logs, self.names)
        shown = {k.removeprefix("train_"): f"{named[k]:.3f}" for k in self.show if k in named}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        evals = {k: v for k, v in named.items() if k.startswith("eval_")}
        if evals:
            self.bar.write(f"step {state.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items())))


def callbacks(out: Path, names: dict, show: list[str], desc: str, initial: dict | None = None) -> list:
    return [RenamedMetricsRecorder(out, names, initial), MetricsProgressBar(names, show, desc)]


def follow(trainer, job, names: dict, show: list[str], desc: str, filename: str, stopping: list = ()) -> dict:
    """What a kind that samples hangs on its trainer (RLHF, reinforcement, on-policy distillation): the
    starting point measured on the held-out set (or read back on resume), mentor's metrics recorder and
    progress bar, and early stopping where the job asks for it. Returns the starting point."""
    before = starting_point(trainer, job, names, filename)
    for cb in [*callbacks(job.folder, names, show, desc, before), *stopping]:
        trainer.add_callback(cb)
    return before


def starting_point(trainer, job, names: dict, filename: str) -> dict:
    """The model before training on the held-out set, measured once (a resumed run reads it back), as
    the first point of the eval curves."""
    from mentor.files import atomic_write

    path = job.folder / filename
    if trainer.eval_dataset is None:
        return {}
    if path.exists():
        before = _read_point(path)
        if before is not None:
            return before
        log.warning("%s is damaged (not the JSON object mentor writes); %s", path,
                    "the starting point is read back from metrics.jsonl" if job.state.get("step")
                    else "the model is measured again")
    if job.state.get("step"):
        # the model has trained since: its first run's point is the step-0 row it drew, if it got that far
        metrics = job.folder / "metrics.jsonl"
        rows = read_records(metrics) if metrics.exists() else []
        before = next(({k: v for k, v in row.items() if k != "step"} for row in rows if row.get("step") == 0), {})
    else:
        before = final_eval(trainer, names)
    if job.main and before:
        atomic_write(path, json.dumps(before))
    return before


def _read_point(path: Path) -> dict | None:
    """A measured point as written (an object of numbers), or None when the file is damaged."""
    try:
        point = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return point if isinstance(point, dict) else None


def final_eval(trainer, names: dict) -> dict:
    """Score the model being handed over on the evaluation set, under mentor's names."""
    from transformers.trainer_callback import PrinterCallback

    if trainer.eval_dataset is None:
        return {}
    # the progress bar and the summary show the metrics: Trainer would also print them as a dict (it
    # does so before training starts, where nothing has removed its printer yet)
    trainer.remove_callback(PrinterCallback)
    with known_warnings():
        metrics = trainer.evaluate()
    return {k: v for k, v in rename(metrics, names).items() if k.startswith("eval_")}


def last_train_metrics(trainer, names: dict) -> dict:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {k: v for k, v in rename(logs[-1], names).items() if k.startswith("train_")} if logs else {}


def plot_panels(panels: list[tuple[str, Path, list[str]]], out_png: Path, title: str = "") -> Path:
    """One panel per (title, metrics.jsonl, metric names); eval series get markers."""
    import matplotlib.pyplot as plt  # its Agg backend set by mentor.training.plots

    n = len(panels)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    cache: dict[Path, list[dict]] = {}
    for ax, (panel_title, path, names) in zip(axes.flat, panels):
        rows = cache.setdefault(path, read_metrics(path))
        for name in names:
            pts = [(r["step"], r[name]) for r in rows if name in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name, marker="o" if name.startswith("eval_") else None, markersize=3)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return save_figure(fig, out_png, title)
