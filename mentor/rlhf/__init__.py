"""Preference tuning: reward models, RLHF (reward model, then RL with a KL penalty) and DPO.

    mentor.rlhf.train_reward_model(model=..., preference_dataset=..., output=...)
    mentor.rlhf.rlhf(model=..., preference_dataset=..., prompt_dataset=..., output=...)
    mentor.rlhf.dpo(model=..., data=..., output=...)

Each returns a `mentor.TunedModel` and writes the tuning job's output folder layout.
"""

from mentor.rlhf.config import DPOConfig, RewardModelConfig, RLHFConfig
from mentor.rlhf.data import PreferencePair, Prompt, load_preferences, load_prompts


def train_reward_model(config: RewardModelConfig | None = None, **fields):
    """Train a reward model on preference pairs; see `RewardModelConfig` for the fields."""
    from mentor.rlhf.reward import train_reward_model as _run

    return _run(config, **fields)


def rlhf(config: RLHFConfig | None = None, **fields):
    """Reward model, then reinforcement learning with a KL penalty; see `RLHFConfig` for the fields."""
    from mentor.rlhf.rl import rlhf as _run

    return _run(config, **fields)


def dpo(config: DPOConfig | None = None, **fields):
    """DPO on preference pairs; see `DPOConfig` for the fields."""
    from mentor.rlhf.dpo_recipe import dpo as _run

    return _run(config, **fields)


def __getattr__(name):
    if name == "RewardModel":  # loads torch and transformers only when asked for
        from mentor.rlhf.reward import RewardModel

        return RewardModel
    raise AttributeError(name)


__all__ = ["DPOConfig", "PreferencePair", "Prompt", "RLHFConfig", "RewardModel", "RewardModelConfig", "dpo",
           "load_preferences", "load_prompts", "rlhf", "train_reward_model"]
