"""The `mentor` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import os
import sys

from mentor.errors import MentorError


def _bool_flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, default=None, help=help)


def add_tuning_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that trains (tune, distill); None means 'from the job file or default'."""
    p.add_argument("--config", help="YAML job file holding the same fields; flags override it")
    p.add_argument("--model", help="model reference: hub id, folder, .gguf file, smollm2-135m, tiny:NAME")
    p.add_argument("--data", help="training JSONL")
    p.add_argument("--eval-data", dest="evaluation_data", help="evaluation JSONL")
    p.add_argument("--output", help="output folder")
    p.add_argument("--method", help="full or lora; dpo or dpo-full for preference tuning (tune)")
    p.add_argument("--adapter-size", type=int, help="LoRA rank: 1, 4, 8 or 16")
    p.add_argument("--train-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate-multiplier", type=float)
    p.add_argument("--evaluation-interval", type=int)
    _bool_flag(p, "early-stopping", "stop when eval next-token accuracy stops improving (default on)")
    _bool_flag(p, "checkpoint-selection", "return the best eval checkpoint, not the last (default on)")
    _bool_flag(p, "merge-adapter", "also save base + LoRA adapter merged")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-input-tokens", type=int)
    p.add_argument("--max-output-tokens", type=int)
    p.add_argument("--bf16", choices=["auto", "on", "off"])


def tuning_fields(args: argparse.Namespace, names: list[str]) -> dict:
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


TUNE_FIELDS = ["model", "data", "evaluation_data", "output", "method", "adapter_size", "train_steps", "batch_size",
               "learning_rate_multiplier", "evaluation_interval", "early_stopping", "checkpoint_selection",
               "merge_adapter", "seed", "max_input_tokens", "max_output_tokens", "bf16"]


def cmd_tune(args) -> None:
    from mentor.config import TuneConfig, load_config
    from mentor.recipes.tune import tune
    from mentor.rlhf.cli import run_dpo_from_tune_args, tune_wants_dpo

    if tune_wants_dpo(args):  # --method dpo (LoRA) / dpo-full, or `method: dpo` in the job file
        run_dpo_from_tune_args(args)
        return

    cfg = load_config(args.config, tuning_fields(args, TUNE_FIELDS), TuneConfig)
    tune(cfg)


def cmd_predict(args) -> None:
    from mentor.serving.predict import Predictor, predict_file

    if args.input:
        if not args.output:
            raise MentorError("--input needs --output")
        dst = predict_file(args.model, args.input, args.output, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature)
        print(f"[mentor] predictions written to {dst}")
    elif args.text:
        print(Predictor(args.model).predict(args.text, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    else:
        raise MentorError("give a text to answer, or --input in.jsonl --output out.jsonl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mentor", description="Tune and distill language models on your own hardware.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tune", help="supervised tuning: full fine-tuning, LoRA, or DPO from preference pairs")
    add_tuning_flags(p)
    p.add_argument("--beta", type=float, help="DPO's beta (with --method dpo)")
    p.add_argument("--instruction", help="text put before every prompt (with --method dpo)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("predict", help="answer a text, or a JSONL file of inputs (batch prediction)")
    p.add_argument("model", help="a mentor output folder or any model reference")
    p.add_argument("text", nargs="?")
    p.add_argument("--input", help="JSONL with input_text (or messages) per line")
    p.add_argument("--output", help="JSONL to write, each input row plus 'prediction'")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_predict)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands of other concerns register themselves here (distill, label, eval, rlhf...)."""
    import importlib

    found = []
    for module in ("mentor.distill.cli", "mentor.rlhf.cli", "mentor.evaluation.cli"):
        try:
            found.append(importlib.import_module(module).register)
        except ModuleNotFoundError as err:
            if not (err.name and module.startswith(err.name)):
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MentorError as err:
        print(f"mentor: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mentor: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
