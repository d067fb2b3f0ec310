"""Training curves as a PNG: people would rather look at these than read them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def save_figure(fig, out_png: Path, title: str = "") -> Path:
    """Titled, laid out, written and closed (pyplot keeps every open figure alive otherwise)."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_curves(metrics_path: Path, out_png: Path, best_step: int | None = None, title: str = "") -> Path:
    """Loss and next-token accuracy for train and eval; extra losses (e.g. per task) as dashed lines."""
    rows = read_metrics(metrics_path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                series.setdefault(k, []).append((r["step"], v))
    for name, pts in sorted(series.items()):
        xs, ys = zip(*pts)
        marker = "o" if name.startswith("eval_") else None
        if name.endswith("total_loss"):
            ax_loss.plot(xs, ys, label=name, marker=marker, markersize=3)
        elif name.endswith("_loss"):
            ax_loss.plot(xs, ys, label=name, linestyle="--", marker=marker, markersize=3)
        elif name.endswith("fraction_of_correct_next_step_preds"):
            ax_acc.plot(xs, ys, label=name, marker=marker, markersize=3)
    for ax, label in ((ax_loss, "loss"), (ax_acc, "next-token accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if best_step is not None:
            ax.axvline(best_step, color="gray", linestyle=":", label=f"best step {best_step}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return save_figure(fig, out_png, title)
