"""Evaluation reports: a Markdown table and a bar chart, written at the end of every distillation
and by `mentor eval`."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mentor.evaluation.evaluate import EvalResult  # noqa: E402
from mentor.files import atomic_file, atomic_write  # noqa: E402
from mentor.training.plots import save_figure  # noqa: E402

log = logging.getLogger("mentor")


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def markdown_table(results: list[EvalResult], extra_columns: dict[str, dict[str, str]] | None = None) -> str:
    extra_columns = extra_columns or {}
    metric_names = []
    for r in results:
        for k in ("reward_mean", "accuracy", "choice_accuracy", "exact_match", "f1", "rouge_l"):
            if k in r.metrics and k not in metric_names:
                metric_names.append(k)
    head = ["model", *metric_names, "answered", "n", "s/example", "tokens/example", "parameters", *extra_columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, *(_fmt(r.metrics.get(m), ".3f") for m in metric_names),
                 str(r.metrics.get("answered", "")), str(r.metrics.get("n", "")),
                 _fmt(r.seconds_per_example, ".3f"), _fmt(r.tokens_per_example, ".1f"),
                 "n/a" if r.parameters is None else f"{r.parameters / 1e6:.1f}M",
                 *(extra_columns[c].get(r.name, "") for c in extra_columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(results: list[EvalResult], path: Path, title: str = "") -> Path:
    names = [r.name for r in results]
    metric, _ = results[0].main_metric
    values = [r.main_metric[1] for r in results]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(results)), 3.6))
    bars = ax.bar(range(len(results)), values, color=["#4c72b0" if "teacher" not in n else "#999999" for n in names])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(results)), names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, max(values) * 1.1))
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def file_stem(name: str, taken: set[str]) -> str:
    """A file name for a model's name: safe characters, and unique (two long paths that differ
    only at their ends, or "a/b" and "a_b", would otherwise share one file)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    if len(safe) > 60 or f"predictions-{safe}.jsonl" in taken:
        safe = f"{safe[:51]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def write_report(results: list[EvalResult], folder: Path, title: str, notes: list[str] | None = None) -> Path:
    """report.md + report.png + report.json (the table, for programs and the console) + predictions
    per model (JSONL), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    bar_chart(results, folder / "report.png", title)
    written = set()
    for r in results:
        path = folder / f"predictions-{file_stem(r.name, written)}.jsonl"
        written.add(path.name)
        with atomic_file(path) as f:
            for rec in r.predictions:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for stale in set(p.name for p in folder.glob("predictions-*.jsonl")) - written:  # an earlier run's models
        (folder / stale).unlink()
    summary = {"title": title, "notes": notes or [], "main_metric": results[0].main_metric[0] if results else None,
               "results": [{"name": r.name, "metrics": r.metrics, "seconds_per_example": r.seconds_per_example,
                            "tokens_per_example": r.tokens_per_example, "parameters": r.parameters} for r in results]}
    atomic_write(folder / "report.json", json.dumps(summary, indent=2) + "\n")
    text = f"# {title}\n\n{table}\n\n![report](report.png)\n" + "".join(f"\n- {n}" for n in notes or []) + "\n"
    atomic_write(folder / "report.md", text)  # last: the report is there only once all of it is
    log.info("results on %d examples:\n%s\nreport: %s (chart: report.png; each model's answers: predictions-*.jsonl)",
             results[0].metrics.get("n", 0) if results else 0, table, folder / "report.md")
    return folder / "report.md"
