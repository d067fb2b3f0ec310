"""`mentor eval`: score a tuned model, or an untuned one with few-shot prompting, on a test set."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_eval(args) -> None:
    from mentor.distill.label import read_rows
    from mentor.evaluation.evaluate import evaluate_prompting, evaluate_student
    from mentor.evaluation.report import write_report

    rows = read_rows(args.data)[: args.limit] if args.limit else read_rows(args.data)
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    results = []
    for ref in args.model:
        if args.prompting == "none":
            results.append(evaluate_student(ref, rows, args.task, args.answer_field, labels,
                                            with_rationale=args.with_rationale, name=ref))
        else:
            shots = [] if args.prompting == "zero-shot" else args.prompt_examples
            results.append(evaluate_prompting(ref, rows, args.task, args.answer_field, shots=shots, labels=labels,
                                              max_new_tokens=args.max_new_tokens))
    out = Path(args.output)
    write_report(results, out, f"evaluation on {args.data}")
    print(f"[mentor] report: {out / 'report.md'}")


def register(sub) -> None:
    p = sub.add_parser("eval", help="task metrics of models on a test set (report.md + report.png)")
    p.add_argument("model", nargs="+", help="mentor output folders or model references")
    p.add_argument("--data", required=True, help="test JSONL with input_text and the gold answer")
    p.add_argument("--task", default="math", choices=["math", "choice", "nli", "classify", "extract"])
    p.add_argument("--answer-field", default="output_text")
    p.add_argument("--labels", help="comma-separated label set for classify/nli")
    p.add_argument("--prompting", default="none", choices=["none", "few-shot", "zero-shot"],
                   help="none: the model answers directly (tuned models); few-/zero-shot: chain-of-thought prompting baseline")
    p.add_argument("--prompt-examples", help="few-shot examples JSONL (default: the task's built-in ones)")
    p.add_argument("--with-rationale", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--output", default="eval-report")
    p.set_defaults(func=cmd_eval)
