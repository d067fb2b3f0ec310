"""Benchmark: data efficiency of distilling step-by-step against standard fine-tuning on SVAMP, as the
paper's figure shows it (test accuracy at 12.5%, 25%, 50% and 100% of the training data), with the
recipe chosen on a validation split, never on the test set.

Data: ../shared/data/svamp-palm (800 train / 200 test, PaLM 540B's recorded chain-of-thought).
A fixed 10% of the training rows (80) is held out as validation data (`mentor.data.rows.hold_out`);
the fractions are nested subsets of the other 720. Student: SmolLM2-135M-Instruct, LoRA r=16,
100 steps of 16 for every run (as bench/svamp_distill.py), checkpoints chosen on the validation
split by the task metric of generated answers (`selection_metric="task"`).

1. Recipe choice, on validation only: step-by-step with alpha 0.5 and with alpha 0.8 (rationale
   followed by the answer sentence, wrong rationales masked) on all the data, seed 0, without a
   test set; the alpha with the better validation score is used everywhere after, and its run is
   then scored on the test set as the 100%, seed-0 step-by-step point.
2. The grid: fine-tuning and step-by-step at each fraction and seed, the test set scored once per
   run. Fine-tuning at 100% and step-by-step at 50% (the target's comparison) run first.

    python bench/svamp_data_efficiency.py [--seeds 0,1,2] [--fractions 0.125,0.25,0.5,1]

Finished runs are reused from bench/.work/svamp-efficiency, so an interrupted benchmark (or one
run with more seeds later) trains only what is missing. Prints a table and writes a chart;
`--report` trains nothing: the table and chart of the finished runs, the chart also copied to
docs/images/svamp-data-efficiency.png for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from svamp_distill import DATA, teacher_style  # noqa: E402

import mentor  # noqa: E402
from mentor.data.rows import hold_out, read_rows  # noqa: E402
from mentor.distill.config import DistillConfig  # noqa: E402
from mentor.evaluation.evaluate import evaluate_student  # noqa: E402
from mentor.jobs import read_state  # noqa: E402

RECIPE = {"rationale_format": "rationale+label", "mask_wrong_rationales": True}
ALPHAS = (0.5, 0.8)


def write(path: Path, rows: list[dict]) -> Path:
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows))
        os.replace(tmp, path)
    return path


def splits(work: Path, fractions: list[float]) -> tuple[Path, dict[float, Path], Path]:
    """(validation, {fraction: training subset}, test), each with the teacher-style gold `label`."""
    rows = [{**r, "label": teacher_style(r["equation"])} for r in read_rows(DATA / "train.jsonl")]
    train, validation = hold_out(rows, 0.1)
    order = list(range(len(train)))
    random.Random(0).shuffle(order)  # nested subsets: 12.5% is inside 25%, which is inside 50% ...
    subsets = {f: write(work / f"train-{f:g}.jsonl", [train[i] for i in sorted(order[: round(f * len(train))])])
               for f in fractions}
    test = [{**r, "label": teacher_style(r["equation"])} for r in read_rows(DATA / "test.jsonl")]
    return write(work / "validation.jsonl", validation), subsets, write(work / "test.jsonl", test)


def run(work: Path, name: str, data: Path, validation: Path, test: Path | None, seed: int, args, **fields) -> dict:
    cfg = DistillConfig(
        model="smollm2-135m", teacher="recorded:field=teacher_completion", data=str(data),
        evaluation_data=str(validation), test_data=str(test) if test else None, output=str(work / "runs" / name),
        task="math", label_field="label", answer_field="output_text", tuning="lora", adapter_size=16,
        train_steps=args.steps, batch_size=16, learning_rate_multiplier=2.0, evaluation_interval=args.steps // 4,
        early_stopping=False, selection_metric="task", seed=seed, chat_template="never", label_max_new_tokens=32,
        **fields)
    result = mentor.run(cfg.method, cfg)
    scores = [json.loads(l).get("eval_task_score") for l in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    out = {"validation": max(s for s in scores if s is not None), "best_step": result.best_step,
           "examples": result.extra["examples"], "train_seconds": result.extra["seconds"],
           "tokens": result.extra["tokens_seen"]}
    for key, student in (result.extra.get("test") or {}).items():
        if key.startswith("student"):
            out["test"] = student["accuracy"]
    print(f"[bench] {name}: validation {out['validation']:.3f}" + (f", test {out['test']:.3f}" if "test" in out else "")
          + f", {out['examples']} examples, {out['train_seconds']} s", flush=True)
    return out


def chart(results: dict, fractions: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in (("fine-tuning", "#6b7280"), ("step-by-step", "#2563eb")):
        xs, means, sds = [], [], []
        for f in fractions:
            values = [r["test"] for r in results.get(method, {}).get(f"{f:g}", {}).values()]
            if values:
                xs.append(100 * f)
                means.append(100 * statistics.mean(values))
                sds.append(100 * statistics.stdev(values) if len(values) > 1 else 0)
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, color=color, label=method)
    full = [r["test"] for r in results.get("fine-tuning", {}).get("1", {}).values()]
    if full:
        ax.axhline(100 * statistics.mean(full), ls="--", color="#6b7280", lw=1, label="fine-tuning, 100% of the data")
    ax.set_xscale("log", base=2)
    ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("share of the SVAMP training data (720 = 100%)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("SmolLM2-135M on SVAMP: data efficiency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fractions", default="0.125,0.25,0.5,1")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--work", default=str(ROOT / "bench" / ".work" / "svamp-efficiency"))
    p.add_argument("--report", action="store_true", help="only the table and chart of the runs already finished")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"SVAMP data not found at {DATA} (set MENTOR_SHARED_DATA)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    validation, subsets, test = splits(work, sorted({*fractions, 1.0}))

    # 1. the recipe, chosen on the validation split (no test set here)
    choice = {alpha: run(work, f"choose-alpha{alpha:g}", subsets[1.0], validation, None, 0, args, method="step-by-step",
                         alpha=alpha, **RECIPE) for alpha in ALPHAS}
    alpha = max(ALPHAS, key=lambda a: (choice[a]["validation"], -a))
    scores = ", ".join(f"{a}: {c['validation']:.3f}" for a, c in choice.items())
    print(f"[bench] alpha chosen on validation: {alpha} ({scores})")

    # 2. the grid, the test set scored once per run; the chosen recipe's choice run is its 100%, seed 0
    # run (scored on the test set only now). The comparison the target names comes first.
    results: dict = {"fine-tuning": {}, "step-by-step": {}}
    if 0 in seeds and 1.0 in fractions:
        chosen = work / "runs" / f"choose-alpha{alpha:g}"
        scored = chosen / "test_accuracy.json"
        if not scored.exists():
            student = evaluate_student(str(chosen / "model"), read_rows(test), "math", "output_text",
                                       label_max_new_tokens=32)
            scored.write_text(json.dumps(student.metrics))
        results["step-by-step"]["1"] = {0: {**choice[alpha], "test": json.loads(scored.read_text())["accuracy"]}}
    # Seed 0's whole curve first, then the target's comparison (fine-tuning at 100%, step-by-step at 50%)
    # for the other seeds, then the rest: an interrupted run has the most telling points done.
    methods = {"fine-tuning": {"method": "finetune"},
               "step-by-step": {"method": "step-by-step", "alpha": alpha, **RECIPE}}
    target = {("fine-tuning", 1.0), ("step-by-step", 0.5)}
    plan = sorted(((seed, f, method) for seed in seeds for f in fractions for method in methods),
                  key=lambda t: (t[0] != 0, (t[2], t[1]) not in target, t[0], -t[1], t[2]))
    for seed, f, method in plan:
        if seed in results[method].get(f"{f:g}", {}):
            continue
        fields = methods[method]
        tag = f"{fields['method']}-a{alpha:g}" if method == "step-by-step" else fields["method"]
        if args.report and read_state(work / "runs" / f"{tag}-f{f:g}-seed{seed}").get("state") != "succeeded":
            continue
        results[method].setdefault(f"{f:g}", {})[seed] = run(
            work, f"{tag}-f{f:g}-seed{seed}", subsets[f], validation, test, seed, args, **fields)
        if not args.report:
            (work / "results.json").write_text(json.dumps({"alpha": alpha, "choice": choice, "results": results},
                                                          indent=2))

    print(f"\nSVAMP test accuracy % (200 problems), SmolLM2-135M-Instruct LoRA r=16, {args.steps} steps of 16, "
          f"checkpoints chosen on 80 held-out training rows; step-by-step alpha {alpha} (chosen on validation: "
          + ", ".join(f"{a} -> {100 * c['validation']:.1f}" for a, c in choice.items()) + ")\n")
    print("| share of training data | examples | fine-tuning | step-by-step |")
    print("|---:|---:|---:|---:|")
    for f in fractions:
        cells = []
        for method in ("fine-tuning", "step-by-step"):
            values = [r["test"] for r in results[method].get(f"{f:g}", {}).values()]
            if not values:
                cells.append("not run")
                continue
            spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{100 * statistics.mean(values):.1f}{spread} ({len(values)} seed{'s' if len(values) > 1 else ''})")
        examples = next((r["examples"] for m in results.values() for r in m.get(f"{f:g}", {}).values()), "-")
        print(f"| {100 * f:g}% | {examples} | {cells[0]} | {cells[1]} |")
    full = statistics.mean(r["test"] for r in results["fine-tuning"]["1"].values()) if "1" in results["fine-tuning"] \
        else None
    if full is not None and "0.5" in results["step-by-step"]:
        half = statistics.mean(r["test"] for r in results["step-by-step"]["0.5"].values())
        verdict = "met" if half >= full else "missed"
        print(f"\nstep-by-step at 50% ({100 * half:.1f}) vs fine-tuning at 100% ({100 * full:.1f}): "
              f"{100 * (half - full):+.1f} points; target (>= 0): {verdict}")
    chart(results, fractions, work / "data_efficiency.png")
    print(f"chart: {work / 'data_efficiency.png'}")
    if args.report:
        shutil.copy(work / "data_efficiency.png", ROOT / "docs" / "images" / "svamp-data-efficiency.png")


if __name__ == "__main__":
    main()
