"""`mentor reward-model`, `mentor rlhf` and `mentor dpo`; and DPO behind `mentor tune --method dpo`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from mentor.cli import TUNE_FIELDS, _bool_flag, add_tuning_flags, tuning_fields

COMMON_FIELDS = ["model", "output", "method", "adapter_size", "batch_size", "evaluation_interval", "instruction", "seed",
                 "bf16"]
REWARD_FIELDS = COMMON_FIELDS + ["preference_dataset", "eval_dataset", "reward_model_train_steps",
                                 "reward_model_learning_rate_multiplier", "prompt_sequence_length",
                                 "target_sequence_length"]
RLHF_FIELDS = REWARD_FIELDS + ["prompt_dataset", "eval_prompt_dataset", "reward_model",
                               "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier",
                               "kl_coeff", "num_generations", "temperature", "merge_adapter"]
DPO_FIELDS = TUNE_FIELDS + ["beta", "instruction"]


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job file holding the same fields; flags override it")
    p.add_argument("--model", help="model reference: hub id, folder, mentor output, .gguf, smollm2-135m, tiny:NAME")
    p.add_argument("--output", help="output folder")
    p.add_argument("--method", choices=["full", "lora"], help="full or lora (default lora)")
    p.add_argument("--adapter-size", type=int, help="LoRA rank: 1, 4, 8 or 16")
    p.add_argument("--batch-size", type=int, help="preference pairs (reward model) or prompts (RL) per step")
    p.add_argument("--evaluation-interval", type=int)
    p.add_argument("--instruction", help="text prepended to every prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--bf16", choices=["auto", "on", "off"])


def _reward_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preference-dataset", help="preference pairs JSONL: {input_text, candidate_0, candidate_1, choice} "
                                                "or {prompt, chosen, rejected}")
    p.add_argument("--eval-dataset", help="held-out preference pairs (reward-model pairwise accuracy)")
    p.add_argument("--reward-model-train-steps", type=int)
    p.add_argument("--reward-model-learning-rate-multiplier", type=float)
    p.add_argument("--prompt-sequence-length", type=int, help="prompt tokens kept (default 512)")
    p.add_argument("--target-sequence-length", type=int, help="answer tokens kept and generated (default 64)")


def cmd_reward_model(args) -> None:
    from mentor.config import load_config
    from mentor.rlhf import RewardModelConfig, train_reward_model

    train_reward_model(load_config(args.config, tuning_fields(args, REWARD_FIELDS), RewardModelConfig))


def cmd_rlhf(args) -> None:
    from mentor.config import load_config
    from mentor.rlhf import RLHFConfig, rlhf

    rlhf(load_config(args.config, tuning_fields(args, RLHF_FIELDS), RLHFConfig))


def cmd_dpo(args) -> None:
    run_dpo_from_tune_args(args)


def run_dpo_from_tune_args(args: argparse.Namespace):
    """DPO from `mentor tune`'s flags (and job file); `--method dpo` is LoRA, `--method dpo-full` full."""
    from mentor.config import load_config
    from mentor.rlhf import DPOConfig, dpo

    return dpo(load_config(getattr(args, "config", None), tuning_fields(args, DPO_FIELDS), DPOConfig))


def tune_wants_dpo(args: argparse.Namespace) -> bool:
    """Whether a `mentor tune` command line (or its job file) asks for DPO."""
    method = getattr(args, "method", None)
    if method is None and getattr(args, "config", None) and Path(args.config).is_file():
        try:
            method = (yaml.safe_load(Path(args.config).read_text()) or {}).get("method")
        except (yaml.YAMLError, AttributeError):
            return False  # load_config reports the broken file
    return isinstance(method, str) and method.startswith("dpo")


def register(subparsers) -> None:
    p = subparsers.add_parser("reward-model", help="train a reward model on preference pairs")
    _common_flags(p)
    _reward_flags(p)
    p.set_defaults(func=cmd_reward_model)

    p = subparsers.add_parser("rlhf", help="RLHF: a reward model, then reinforcement learning with a KL penalty")
    _common_flags(p)
    _reward_flags(p)
    p.add_argument("--prompt-dataset", help="prompts JSONL for reinforcement learning: {input_text}")
    p.add_argument("--eval-prompt-dataset", help="held-out prompts (mean reward and KL before and after)")
    p.add_argument("--reward-model", help="reuse a trained reward model (skips the reward-model stage)")
    p.add_argument("--reinforcement-learning-train-steps", type=int)
    p.add_argument("--reinforcement-learning-rate-multiplier", type=float)
    p.add_argument("--kl-coeff", type=float, help="weight of the KL penalty to the starting model (default 0.1)")
    p.add_argument("--num-generations", type=int, help="answers sampled per prompt (default 4)")
    p.add_argument("--temperature", type=float, help="sampling temperature while learning (default 1.0)")
    _bool_flag(p, "merge-adapter", "also save base + LoRA adapter merged")
    p.set_defaults(func=cmd_rlhf)

    p = subparsers.add_parser("dpo", help="DPO: preference tuning without a reward model")
    add_tuning_flags(p)
    p.add_argument("--beta", type=float, help="DPO's beta: pull towards the starting model (default 0.1)")
    p.add_argument("--instruction", help="text prepended to every prompt")
    p.set_defaults(func=cmd_dpo)
