"""`mentor distill` and `mentor label`."""

from __future__ import annotations

import argparse

from mentor.cli import TUNE_FIELDS, add_tuning_flags, tuning_fields

DISTILL_FIELDS = ["teacher", "method", "alpha", "task", "prompt_examples", "test_data", "label_field", "answer_field",
                  "filter_disagreements", "mask_wrong_rationales", "rationale_format", "with_rationale", "teacher_concurrency", "labels"]


def cmd_distill(args) -> None:
    from mentor.config import load_config
    from mentor.whitebox.config import METHOD_NAMES

    if args.method in METHOD_NAMES:  # white-box methods: the teacher's weights, not its text
        from mentor.whitebox.cli import run

        run(args)
        return
    from mentor.distill.config import DistillConfig
    from mentor.distill.recipe import distill

    fields = tuning_fields(args, TUNE_FIELDS + DISTILL_FIELDS + ["tuning"])
    if args.labels:
        fields["labels"] = [x.strip() for x in args.labels.split(",")]
    distill(load_config(args.config, fields, DistillConfig))


def cmd_label(args) -> None:
    from mentor.distill.label import label_file

    label_file(args.teacher, args.data, args.output, task=args.task, prompt_examples=args.prompt_examples,
               labels=[x.strip() for x in args.labels.split(",")] if args.labels else None,
               answer_field=args.answer_field, concurrency=args.teacher_concurrency)


def register(sub) -> None:
    from mentor.whitebox.cli import add_whitebox_flags

    p = sub.add_parser("distill", help="distil a teacher into a student: step-by-step, standard, finetune baseline, "
                       "or white-box logit, feature, relation, self", conflict_handler="resolve")
    add_tuning_flags(p)
    add_whitebox_flags(p)  # --student, --teacher, --tuning, KD flags
    p.add_argument("--method", choices=["step-by-step", "standard", "finetune", "logit", "feature", "relation", "self"],
                   help="step-by-step (default): gold or teacher labels + teacher rationales, multi-task; standard: "
                        "teacher labels only; finetune: gold labels only; logit/feature/relation/self: white-box "
                        "distillation from the teacher's weights")
    p.add_argument("--teacher", help="step-by-step/standard: hf:REF, openai:MODEL@URL, openai-completions:MODEL@URL, "
                   "recorded:FILE, recorded:field=NAME; white-box: a model reference")
    g = p.add_argument_group("distilling step-by-step")
    g.add_argument("--alpha", type=float, help="label-loss weight (default 0.5)")
    g.add_argument("--task", choices=["math", "choice", "nli", "classify", "extract"])
    g.add_argument("--prompt-examples", help="few-shot CoT examples JSONL: input, rationale, label")
    g.add_argument("--labels", help="comma-separated label set for classify/nli")
    g.add_argument("--test-data", help="test JSONL: student and teacher are scored on it at the end")
    g.add_argument("--label-field", help="field with the gold label to train on (default output_text)")
    g.add_argument("--answer-field", help="field with the gold answer to score against (default output_text)")
    g.add_argument("--filter-disagreements", action=argparse.BooleanOptionalAction, default=None,
                   help="drop examples where the teacher's answer disagrees with the gold one")
    g.add_argument("--mask-wrong-rationales", action=argparse.BooleanOptionalAction, default=None,
                   help="keep every gold-labelled example for the label task; train the rationale task only on "
                        "rationales that parsed and reached the gold answer")
    g.add_argument("--rationale-format", choices=["rationale", "rationale+label"],
                   help="rationale task target: the rationale alone (paper) or followed by the answer sentence")
    g.add_argument("--with-rationale", action=argparse.BooleanOptionalAction, default=None,
                   help="also test the student reasoning first: it writes its rationale and the label is read from "
                        "the answer that closes it (implies --rationale-format rationale+label)")
    g.add_argument("--teacher-concurrency", type=int)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("label", help="the teacher step alone: rationales and labels for a JSONL file")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--task", default="math", choices=["math", "choice", "nli", "classify", "extract"])
    p.add_argument("--prompt-examples")
    p.add_argument("--labels")
    p.add_argument("--answer-field", default="output_text")
    p.add_argument("--teacher-concurrency", type=int, default=8)
    p.set_defaults(func=cmd_label)
