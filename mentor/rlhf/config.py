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

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mentor.config import AdapterSize

# Recommended learning rates per stage and method; the *_multiplier fields scale these.
REWARD_MODEL_LR = {"full": 1e-5, "lora": 1e-4}
REINFORCEMENT_LEARNING_LR = {"full": 1e-6, "lora": 1e-5}
DPO_LR = {"full": 1e-6, "lora": 1e-5}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="model reference: hub id, folder, mentor output, .gguf, 'smollm2-135m' or 'tiny:NAME'")
    output: str = Field(description="output folder")
    method: Literal["full", "lora"] = "lora"
    adapter_size: AdapterSize = 8
    batch_size: int = Field(8, ge=1, description="preference pairs (reward model, DPO) or prompts (RL) per step")
    evaluation_interval: int = Field(20, ge=1)
    instruction: str | None = Field(None, description="prepended to every prompt (do not set it if the data already holds it)")
    seed: int = 0
    max_examples: int = Field(10_000, ge=1)
    chat_template: Literal["auto", "never"] = "auto"
    lora_target_modules: str | list[str] = "all-linear"
    bf16: Literal["auto", "on", "off"] = "auto"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)


class RewardModelConfig(_Common):
    """A reward model: the base model with a scalar head, trained on preference pairs."""

    preference_dataset: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    eval_dataset: str | None = Field(None, description="held-out preference pairs: pairwise accuracy is reported on them")
    reward_model_train_steps: int = Field(1000, ge=1)
    reward_model_learning_rate_multiplier: float = Field(1.0, gt=0)
    prompt_sequence_length: int = Field(512, ge=1, description="prompt tokens kept (the end is kept)")
    target_sequence_length: int = Field(64, ge=1, description="answer tokens kept (the start is kept)")

    @property
    def learning_rate(self) -> float:
        return REWARD_MODEL_LR[self.method] * self.reward_model_learning_rate_multiplier


class RLHFConfig(RewardModelConfig):
    """Reward model, then reinforcement learning of the policy against it with a KL penalty."""

    preference_dataset: str | None = Field(None, description="preference pairs to train the reward model on")
    prompt_dataset: str = Field(description="prompts JSONL for reinforcement learning ({\"input_text\": ...})")
    eval_prompt_dataset: str | None = Field(None, description="held-out prompts: mean reward and KL are reported on them")
    reward_model: str | None = Field(None, description="a trained reward model (mentor reward-model output or folder); "
                                                       "skips the reward-model stage")
    reinforcement_learning_train_steps: int = Field(1000, ge=1)
    reinforcement_learning_rate_multiplier: float = Field(1.0, gt=0)
    kl_coeff: float = Field(0.1, ge=0, description="weight of the KL penalty to the starting model in the reward")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the RLOO baseline needs 2 or more)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature while learning")
    merge_adapter: bool = False

    @model_validator(mode="after")
    def _reward_source(self):
        if not self.preference_dataset and not self.reward_model:
            raise ValueError("give preference_dataset (to train a reward model) or reward_model (to reuse one)")
        return self

    @property
    def rl_learning_rate(self) -> float:
        return REINFORCEMENT_LEARNING_LR[self.method] * self.reinforcement_learning_rate_multiplier

    def reward_model_config(self, output: str) -> RewardModelConfig:
        fields = {k: getattr(self, k) for k in RewardModelConfig.model_fields if k not in ("output",)}
        return RewardModelConfig(**{**fields, "output": output})


class DPOConfig(_Common):
    """Direct preference optimisation: the policy learns from preference pairs without a reward model."""

    data: str = Field(description="preference pairs JSONL (cloud or prompt/chosen/rejected form)")
    evaluation_data: str | None = Field(None, description="held-out preference pairs")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the starting model (DPO's beta)")
    train_steps: int = Field(300, ge=1)
    learning_rate_multiplier: float = Field(1.0, gt=0)
    early_stopping: bool = True
    early_stopping_patience: int = Field(3, ge=1)
    early_stopping_min_delta: float = Field(0.001, ge=0, description="smallest drop in eval DPO loss that counts")
    checkpoint_selection: bool = True
    max_input_tokens: int = Field(7168, ge=1)
    max_output_tokens: int = Field(1024, ge=1)
    merge_adapter: bool = False
    warmup_ratio: float = Field(0.03, ge=0, lt=1)

    @field_validator("method", mode="before")
    @classmethod
    def _tune_method(cls, v):
        # `mentor tune --method dpo` (LoRA) or `--method dpo-full`
        return {"dpo": "lora", "dpo-lora": "lora", "dpo-full": "full"}.get(v, v)

    @property
    def learning_rate(self) -> float:
        return DPO_LR[self.method] * self.learning_rate_multiplier
