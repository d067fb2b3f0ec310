"""Preference tuning components: preference data, prompt rendering, reward models.

The jobs (`reward-model`, `rlhf`, `dpo`) are run with `mentor.reward_model(...)`, `mentor.run("rlhf", ...)`,
`mentor.dpo(...)` (or `mentor.run(kind, ...)`); `mentor.rlhf.RewardModel(folder).score(...)`
scores answers with a trained reward model.
"""

from mentor.rlhf.config import DPOConfig, RewardModelConfig, RLHFConfig
from mentor.rlhf.data import PreferencePair, Prompt, load_preferences, load_prompts


def __getattr__(name):
    if name == "RewardModel":  # loads torch and transformers only when asked for
        from mentor.rlhf.reward import RewardModel

        return RewardModel
    raise AttributeError(name)


__all__ = ["DPOConfig", "PreferencePair", "Prompt", "RLHFConfig", "RewardModel", "RewardModelConfig",
           "load_preferences", "load_prompts"]
