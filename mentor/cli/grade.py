"""`mentor grade`: a grader over a JSONL file of items and their answers, with a summary."""

from __future__ import annotations

import logging

log = logging.getLogger("mentor")


def cmd_grade(args) -> None:
    from mentor.graders.files import grade_file

    summary = grade_file(args.grader, args.data, samples=args.samples, sample_field=args.sample_field,
                         output=args.output)
    print(summary.line())
    for kind, count in sorted(summary.error_kinds.items()):
        print(f"  {kind}: {count}")


def register(sub) -> None:
    p = sub.add_parser("grade", help="score answers with a grader (OpenAI's grader shapes, or a task metric)")
    p.add_argument("--grader", required=True, help="the grader's JSON file")
    p.add_argument("--data", required=True, help="JSONL of items: what the grader's {{item.*}} templates read")
    p.add_argument("--samples", help="JSONL of the answers, one per item in the same order (an object with "
                                     "'output_text', or the --sample-field; mentor predict's output works as is)")
    p.add_argument("--sample-field", default="prediction", help="the field holding the answer to grade, in "
                   "--samples, or in the items themselves without --samples (default: prediction)")
    p.add_argument("--output", help="JSONL of per-row results: line, reward, errors, sub_rewards")
    p.set_defaults(func=cmd_grade)
