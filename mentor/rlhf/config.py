"""Job parameters for preference tuning, named as the managed RLHF job names them.

The RLHF job (reward model, then reinforcement learning) takes the cloud's names:
`preference_dataset`, `prompt_dataset`, `eval_dataset`, `reward_model_train_steps`,
`reinforcement_learning_train_steps`, `reward_model_learning_rate_multiplier`,
`reinforcement_learning_rate_multiplier`, `kl_coeff`, `instruction`,
`prompt_sequence_length` and `target_sequence_length`, with the cloud's defaults.
DPO is a tuning method, so its job takes the tuning job's names (`data`, `train_steps`, ...)
plus `beta`. Learning rates are multipliers of the recommended rates below.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from mentor.jobs.config import AdapterSize, Seed, check_learning_rate
from mentor.training.config import ADAPTER_SIZE_HELP, MODEL_HELP, FitConfig, LoraTargets, TuneConfig

# Recommended learning rates per stage and method; the *_multiplier fields scale these.
REWARD_MODEL_LR = {"full": 1e-5, "lora": 1e-4}
REINFORCEMENT_LEARNING_LR = {"full": 1e-6, "lora": 1e-5}
DPO_LR = {"full": 1e-6, "lora": 1e-5}


INSTRUCTION_HELP = "text prepended to every prompt (do not set it if the data already holds it)"


class PreferenceConfig(FitConfig):
    """What the reward-model and RLHF jobs share, under the cloud RLHF job's names."""

    model: str = Field(description=MODEL_HELP)
    tuning: Literal["full", "lora"] = Field("lora", description="how the weights are trained: all of them, or LoRA adapters")
    adapter_size: AdapterSize = Field(8, description=ADAPTER_SIZE_HELP)
    batch_size: int = Field(8, ge=1, description="preference pairs (reward model) or prompts (RL) per step")
    evaluation_interval: int = Field(20, ge=1, description="steps between evaluations (and checkpoints)")
    instruction: str | None = Field(None, description=INSTRUCTION_HELP)
    seed: Seed = Field(0, description="random seed")
    max_examples: int = Field(10_000, ge=1, description="most examples read from each file")
    chat_template: Literal["auto", "never"] = Field("auto", description="render prompts with the tokenizer's chat "
                                                                        "template when it has one (auto), or never")
    lora_target_modules: LoraTargets = Field("all-linear", description="LoRA target modules: 'all-linear' or names")
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast; auto: where the hardware computes "
                                                                  "it natively")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps with a linear learning-rate warm-up")


class RewardModelConfig(PreferenceConfig):
    """A reward model: the base model with a scalar head, trained on preference pairs."""

    input_fields: ClassVar[tuple[str, ...]] = ("preference_dataset", "eval_dataset")
    preference_dataset: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    eval_dataset: str | None = Field(None, description="held-out preference pairs: pairwise accuracy is reported on them")
    reward_model_train_steps: int = Field(1000, ge=1, description="reward-model optimizer steps")
    reward_model_learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended rate "
                                                                                "(1e-5 full, 1e-4 LoRA)")
    prompt_sequence_length: int = Field(512, ge=1, description="prompt tokens kept (the end is kept)")
    target_sequence_length: int = Field(64, ge=1, description="answer tokens kept (the start is kept)")

    @property
    def learning_rate(self) -> float:
        """The rate this job trains at: the reward model's."""
        return self.reward_model_learning_rate

    @property
    def reward_model_learning_rate(self) -> float:
        return REWARD_MODEL_LR[self.tuning] * self.reward_model_learning_rate_multiplier

    @model_validator(mode="after")
    def _sane_learning_rates(self):
        check_learning_rate(self.reward_model_learning_rate, "reward_model_learning_rate_multiplier")
        return self


# what only the reward-model stage of an RLHF job reads
REWARD_STAGE_FIELDS = frozenset(RewardModelConfig.model_fields) - frozenset(PreferenceConfig.model_fields) - {
    "prompt_sequence_length", "target_sequence_length"}


class RLHFConfig(RewardModelConfig):
    """Reward model, then reinforcement learning of the policy against it with a KL penalty."""

    input_fields: ClassVar[tuple[str, ...]] = ("preference_dataset", "eval_dataset", "prompt_dataset",
                                               "eval_prompt_dataset")

    preference_dataset: str | None = Field(None, description="preference pairs to train the reward model on")
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
    merge_adapter: bool = Field(False, description="LoRA: also save base + adapter merged (merged/)")

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

    @property
    def rl_learning_rate(self) -> float:
        return REINFORCEMENT_LEARNING_LR[self.tuning] * self.reinforcement_learning_rate_multiplier

    @model_validator(mode="after")
    def _sane_rl_learning_rate(self):
        check_learning_rate(self.rl_learning_rate, "reinforcement_learning_rate_multiplier")
        return self

    def reward_model_config(self, output: str) -> RewardModelConfig:
        fields = {k: getattr(self, k) for k in RewardModelConfig.model_fields if k not in ("output",)}
        return RewardModelConfig(**{**fields, "output": output})


class DPOConfig(TuneConfig):
    """Direct preference optimisation: the policy learns from preference pairs without a reward model;
    a tuning method, so it takes the tuning job's fields (`data` holds the pairs) plus `beta`."""

    recommended_lr: ClassVar[dict[str, float]] = DPO_LR

    method: Literal["dpo"] = Field("dpo", description="dpo: learn from preference pairs")
    data: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    evaluation_data: str | None = Field(None, description="held-out preference pairs (best checkpoint and early stop "
                                                          "on their DPO loss)",
                                        validation_alias=AliasChoices("evaluation_data", "eval_data"))
    learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended learning rate "
                                                                   "(1e-6 full, 1e-5 LoRA)")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the starting model (DPO's beta)")

    @model_validator(mode="after")
    def _no_packing(self):
        if self.packing:  # TRL's DPO trainer pairs chosen and rejected rows of its own padded batches
            raise ValueError("packing is for supervised tuning and text distillation, not DPO")
        return self
    instruction: str | None = Field(None, description=INSTRUCTION_HELP)
    early_stopping_min_delta: float = Field(0.001, ge=0, description="smallest drop in eval DPO loss that counts")
