"""White-box distillation flags and runner, used by `mentor distill --method logit|feature|relation|self`.

    mentor distill --method logit --teacher TEACHER --student STUDENT --data train.jsonl \\
        --eval-data eval.jsonl --output out/ [--divergence jsd --beta 0.5 --temperature 2 --kd-ratio 0.7]
    mentor distill --method logit --offline-logits --top-k 64 ...   # teacher logits on disk
    mentor distill --method feature --layer-map 1:2,2:4 ...
    mentor distill --method relation ...
    mentor distill --method self --student tuned/ [--teacher earlier/checkpoint | no teacher: EMA]

`add_whitebox_flags(parser)` and `run(args)` give `mentor distill` these flags and behaviour.
"""

from __future__ import annotations

import argparse

from mentor.cli import _bool_flag, tuning_fields

WHITEBOX_FIELDS = [
    "model", "data", "evaluation_data", "output", "method", "adapter_size", "train_steps", "batch_size",
    "learning_rate_multiplier", "evaluation_interval", "early_stopping", "checkpoint_selection", "merge_adapter",
    "seed", "max_input_tokens", "max_output_tokens", "bf16",
    "teacher", "tuning", "kd_ratio", "divergence", "beta", "temperature", "on_policy_fraction", "max_new_tokens",
    "ema_decay", "offline_logits", "top_k", "teacher_logits_dir", "shard_examples", "feature_loss", "layer_map",
    "relation_level", "relation_max_tokens",
]


def add_whitebox_flags(p: argparse.ArgumentParser) -> None:
    """The white-box distillation flags (the tuning flags come from `mentor.cli.add_tuning_flags`)."""
    p.add_argument("--student", dest="model", help="the student model reference (same as --model)")
    p.add_argument("--teacher", help="teacher model reference (method self: omit, or 'ema', for an EMA teacher)")
    p.add_argument("--tuning", choices=["full", "lora"], help="how the student is trained: full or lora (default lora for step-by-step, full for white-box)")
    p.add_argument("--kd-ratio", type=float, help="weight of the distillation loss vs the next-token loss (default 0.5)")
    g = p.add_argument_group("logit and self-distillation")
    g.add_argument("--divergence", choices=["forward_kl", "reverse_kl", "jsd"])
    g.add_argument("--beta", type=float, help="generalized JSD beta (with --divergence jsd)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--on-policy-fraction", type=float, help="share of steps on student-generated outputs (TRL GKD)")
    g.add_argument("--max-new-tokens", type=int, help="length of on-policy generations")
    g.add_argument("--ema-decay", type=float, help="self-distillation from an EMA of the student")
    _bool_flag(g, "offline-logits", "compute the teacher's top-k log-probs once on disk; train without the teacher")
    g.add_argument("--top-k", type=int, help="log-probs stored per position (offline logits)")
    g.add_argument("--teacher-logits-dir", help="where offline logits are kept (default OUTPUT/teacher_logits)")
    g.add_argument("--shard-examples", type=int, help="examples per offline-logits shard")
    g = p.add_argument_group("feature and relation")
    g.add_argument("--feature-loss", choices=["mse", "cosine"])
    g.add_argument("--layer-map", help="student:teacher hidden-state pairs, e.g. 1:2,2:4 (default uniform)")
    g.add_argument("--relation-level", choices=["token", "sequence"])
    g.add_argument("--relation-max-tokens", type=int)


def run(args: argparse.Namespace):
    from mentor.config import load_config
    from mentor.whitebox.config import WhiteboxConfig
    from mentor.whitebox.recipe import distill

    cfg = load_config(args.config, tuning_fields(args, WHITEBOX_FIELDS), WhiteboxConfig)
    return distill(cfg)
