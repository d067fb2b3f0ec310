"""mentor: tune and distill language models on your own hardware.

    mentor.run("step-by-step", model=..., teacher=..., data=..., output=...)  # any job kind
    mentor.tune(model=..., data=..., output=...)                            # the same, by kind
    mentor.kinds()                                                         # what there is

Every call returns a `TunedModel`; rerunning the same job resumes it, or returns its result.
"""

from __future__ import annotations

from typing import Any

from mentor import recipes as _recipes  # noqa: F401  (registers the built-in job kinds)
from mentor.jobs import TunedModel, kinds
from mentor.jobs import run as _run
from mentor.training.config import TuneConfig

__version__ = "0.1.0"


def run(kind: str, config=None, **fields: Any) -> TunedModel:
    """Run a job of any registered kind (see `mentor.kinds()`); fields as in its config."""
    return _run(kind, config, **fields)


def tune(config: TuneConfig | None = None, **fields: Any) -> TunedModel:
    """Supervised tuning (full or LoRA); see `mentor.TuneConfig` for the fields."""
    return _run("tune", config, **fields)


def distill(method: str = "step-by-step", config=None, **fields: Any) -> TunedModel:
    """Distil a teacher into a student with a distillation method (step-by-step, standard, finetune,
    logit, feature, relation, self)."""
    return _run(method, config, **fields)


def dpo(config=None, **fields: Any) -> TunedModel:
    """DPO on preference pairs."""
    return _run("dpo", config, **fields)


def reward_model(config=None, **fields: Any) -> TunedModel:
    """A reward model trained on preference pairs."""
    return _run("reward-model", config, **fields)


def rlhf(config=None, **fields: Any) -> TunedModel:
    """A reward model (or a given one), then reinforcement learning with a KL penalty."""
    return _run("rlhf", config, **fields)


__all__ = ["TuneConfig", "TunedModel", "distill", "dpo", "kinds", "reward_model", "rlhf", "run", "tune"]
