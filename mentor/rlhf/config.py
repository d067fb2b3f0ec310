"""Job parameters for preference tuning, named as the managed RLHF job names them.

The RLHF job (reward model, then reinforcement learning) takes the cloud's names:
`preference_dataset`, `prompt_dataset`, `eval_dataset`, `reward_model_train_steps`,
`reinforcement_learning_train_steps`, `reward_model_learning_rate_multiplier`,
`reinforcement_learning_rate_multiplier`, `kl_coeff`, `instruction`,
`prompt_sequence_length` and `target_sequence_length`, with the cloud's defaults.
DPO is a tuning method, so its job takes the tuning job's names (`data`, `train_steps`, ...)
plus `beta`. Learning rates are multipliers of the recommended rates below.

The RLHF config holds its two stages: the reward-model stage's fields and the RL stage's are each
declared once, in a group of their own, and the reward-model job is the first stage's group alone.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from mentor.jobs.config import check_learning_rate
from mentor.training.config import (
    ExamplesGroup,
    FieldGroup,
    MergeGroup,
    PromptGroup,
    SelectionGroup,
    TrainingGroup,
    TuningGroup,
)

# Recommended learning rates per stage and method; the *_multiplier fields scale these.
REWARD_MODEL_LR = {"full": 1e-5, "lora": 1e-4}
REINFORCEMENT_LEARNING_LR = {"full": 1e-6, "lora": 1e-5}
DPO_LR = {"full": 1e-6, "lora": 1e-5}


INSTRUCTION_HELP = "text prepended to every prompt (do not set it if the data already holds it)"


class InstructionGroup(FieldGroup):
    """An instruction put before every prompt, in training and (said in the model card) when predicting."""

    instruction: str | None = Field(None, description=INSTRUCTION_HELP)


class PreferenceTrainingGroup(InstructionGroup, PromptGroup, TrainingGroup):
    """What both stages of the cloud's RLHF job (the reward model, the policy) train with, under its names."""

    # the cloud RLHF job's default: both of its stages start at their full rate
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps with a linear learning-rate warm-up")
    prompt_sequence_length: int = Field(512, ge=1, description="prompt tokens kept (the end is kept)")
    target_sequence_length: int = Field(64, ge=1, description="answer tokens kept (the start is kept)")


class RewardModelStageGroup(TuningGroup):
    """The reward-model stage: its data, steps and learning rate."""

    preference_dataset: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    eval_dataset: str | None = Field(None, description="held-out preference pairs: pairwise accuracy is reported on them")
    reward_model_train_steps: int = Field(1000, ge=1, description="reward-model optimizer steps")
    reward_model_learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended rate "
                                                                                "(1e-5 full, 1e-4 LoRA)")

    @property
    def reward_model_learning_rate(self) -> float:
        return REWARD_MODEL_LR[self.tuning] * self.reward_model_learning_rate_multiplier

    @model_validator(mode="after")
    def _sane_reward_model_learning_rate(self):
        check_learning_rate(self.reward_model_learning_rate, "reward_model_learning_rate_multiplier")
        return self


class RLStageGroup(MergeGroup, TuningGroup):
    """The reinforcement-learning stage: prompts, the reward model it learns against, steps, rate, RLOO."""

    prompt_dataset: str = Field(description="prompts JSONL for reinforcement learning ({\"input_text\": ...})")
    eval_prompt_dataset: str | None = Field(None, description="held-out prompts: mean reward and KL are reported on them")
    reward_model: str | None = Field(None, description="a trained reward model (mentor reward-model output or folder); "
                                                       "skips the reward-model stage")
    reinforcement_learning_train_steps: int = Field(1000, ge=1, description="reinforcement-learning optimizer steps")
    reinforcement_learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended rate "
                                                                                 "(1e-6 full, 1e-5 LoRA)")
    kl_coeff: float = Field(0.1, ge=0, description="weight of the KL penalty to the starting model in the reward")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the RLOO baseline needs 2 or more)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature while learning")

    @property
    def rl_learning_rate(self) -> float:
        return REINFORCEMENT_LEARNING_LR[self.tuning] * self.reinforcement_learning_rate_multiplier

    @model_validator(mode="after")
    def _sane_rl_learning_rate(self):
        check_learning_rate(self.rl_learning_rate, "reinforcement_learning_rate_multiplier")
        return self


# what only the reward-model stage of an RLHF job reads
REWARD_STAGE_FIELDS = frozenset(RewardModelStageGroup.model_fields) - frozenset(TuningGroup.model_fields)
# what only the RL stage reads
RL_STAGE_FIELDS = frozenset(RLStageGroup.model_fields) - frozenset(TuningGroup.model_fields)


class RewardModelConfig(PreferenceTrainingGroup, RewardModelStageGroup):
    """A reward model: the base model with a scalar head, trained on preference pairs."""

    input_fields: ClassVar[tuple[str, ...]] = ("preference_dataset", "eval_dataset")

    @property
    def learning_rate(self) -> float:
        """The rate this job trains at: the reward model's."""
        return self.reward_model_learning_rate


class RLHFConfig(PreferenceTrainingGroup, RLStageGroup, RewardModelStageGroup):
    """Reward model, then reinforcement learning of the policy against it with a KL penalty: the
    reward-model job's fields (its stage) and the RL stage's."""

    input_fields: ClassVar[tuple[str, ...]] = ("preference_dataset", "eval_dataset", "prompt_dataset",
                                               "eval_prompt_dataset")

    # optional here: a given reward_model skips the stage that trains one
    preference_dataset: str | None = Field(None, description="preference pairs to train the reward model on")

    @model_validator(mode="after")
    def _reward_source(self):
        if not self.preference_dataset and not self.reward_model:
            raise ValueError("give preference_dataset (to train a reward model) or reward_model (to reuse one)")
        return self

    def unused_reward_fields(self) -> list[str]:
        """With `reward_model` given, the reward-model stage's settings that were set and go unused
        (compared with the defaults, not model_fields_set: a saved job's config holds every field)."""
        if not self.reward_model:
            return []
        return sorted(f for f in REWARD_STAGE_FIELDS if getattr(self, f) != type(self).model_fields[f].default)

    @property
    def learning_rate(self) -> float:
        """The rate the RLHF job's own training (the policy's) runs at; the reward-model stage is a
        job of its own with its own config (`reward_model_config`) and rate."""
        return self.rl_learning_rate

    def reward_model_config(self, output: str) -> RewardModelConfig:
        fields = {k: getattr(self, k) for k in RewardModelConfig.model_fields if k != "output"}
        return RewardModelConfig(**{**fields, "output": output})


class DPOConfig(SelectionGroup, MergeGroup, InstructionGroup, ExamplesGroup):
    """Direct preference optimisation: the policy learns from preference pairs without a reward model;
    a tuning method, so it takes the tuning job's fields (`data` holds the pairs) plus `beta`."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")
    recommended_lr: ClassVar[dict[str, float]] = DPO_LR
    # DPO's pairs are the DPO trainer's own padded batches (chosen and rejected rows side by side)
    retired_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "packing": (False, "packing is for supervised tuning and text distillation, not DPO")}

    method: Literal["dpo"] = Field("dpo", description="dpo: learn from preference pairs")
    # the data group's files, holding pairs here
    data: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    evaluation_data: str | None = Field(None, description="held-out preference pairs (best checkpoint and early stop "
                                                          "on their DPO loss)",
                                        validation_alias=AliasChoices("evaluation_data", "eval_data"))
    # DPO's recommended rates (DPO_LR) are far below tuning's: the description names them
    learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended learning rate "
                                                                   "(1e-6 full, 1e-5 LoRA)")
    # the metric DPO's evaluations judge is a loss, so a gain is a drop
    early_stopping_min_delta: float = Field(0.001, ge=0, description="smallest drop in eval DPO loss that counts")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the starting model (DPO's beta)")
