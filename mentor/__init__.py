"""mentor: tune and distill language models on your own hardware.

    mentor.run("step-by-step", model=..., teacher=..., data=..., output=...)  # any job kind
    mentor.tune(model=..., data=..., output=...)      # mentor.run("tune", ...); also mentor.dpo, mentor.reward_model
    mentor.kinds()                                    # every kind: name, config, summary
    mentor.score(reward_model, prompt, [answer, ...]) # a reward model's scores of answers

(`mentor.distill` and `mentor.rlhf` are the packages of those components; their jobs run with
`mentor.run("step-by-step" | "logit" | ... | "rlhf", ...)`.)

Every call returns a `TunedModel`; rerunning the same job resumes it, or returns its result.
"""

from __future__ import annotations

from typing import Any

from mentor import logs as _logs  # the "mentor" logger speaks on stdout, as transformers' does
from mentor import recipes as _recipes  # noqa: F401  (registers the built-in job kinds)
from mentor.jobs import TunedModel, kinds
from mentor.jobs import run as _run
from mentor.training.config import TuneConfig

__version__ = "0.1.0"
_logs.quiet_libraries()  # deprecation notices and internal load bars of the libraries underneath


def run(kind: str, config=None, **fields: Any) -> TunedModel:
    """Run a job of any registered kind (see `mentor.kinds()`); fields as in its config."""
    return _run(kind, config, **fields)


def tune(config: TuneConfig | None = None, **fields: Any) -> TunedModel:
    """Supervised tuning (full or LoRA); see `mentor.TuneConfig` for the fields."""
    return _run("tune", config, **fields)


def dpo(config=None, **fields: Any) -> TunedModel:
    """DPO on preference pairs."""
    return _run("dpo", config, **fields)


def reward_model(config=None, **fields: Any) -> TunedModel:
    """A reward model trained on preference pairs."""
    return _run("reward-model", config, **fields)


def get_tuned_model(name: str, data_dir: str | None = None) -> TunedModel:
    """A model from the registry of `mentor server` by name (ft:BASE:SUFFIX:ID); `.predict(...)` works."""
    from mentor.server.registry import get_tuned_model as _get

    return _get(name, data_dir)


def score(model: str, prompts, responses: list[str], data_dir: str | None = None) -> list[float]:
    """A reward model's scores of answers (higher: preferred), as it scores them in RLHF.

    `model`: a reward-model job's folder, its model folder, or a registered name (ft:...) of
    `mentor server`'s registry in `data_dir`. `prompts`: one prompt for every answer (a text, or a
    conversation ending with the user's turn), or one per answer."""
    from mentor.rlhf.reward import RewardModel

    if model.startswith("ft:"):
        from pathlib import Path

        from mentor.server.db import Database
        from mentor.server.registry import get_model
        from mentor.server.settings import default_data_dir

        model = get_model(Database(Path(data_dir).expanduser() if data_dir else default_data_dir()), model).path
    one = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
    return RewardModel(model).score([prompts] * len(responses) if one else list(prompts), list(responses))


__all__ = ["TuneConfig", "TunedModel", "dpo", "get_tuned_model", "kinds", "reward_model", "run", "score", "tune"]
