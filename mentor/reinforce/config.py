"""The reinforcement job's parameters.

Named as OpenAI's reinforcement method names them where it has a name (`batch_size`,
`learning_rate_multiplier`, `eval_interval` -> `evaluation_interval`, `eval_samples`,
`compute_multiplier` -> `num_generations`, `n_epochs` -> `train_steps`; the REST layer maps them),
and as mentor's other kinds do for the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator

from mentor.training.config import MODEL_HELP, MergeGroup, PromptGroup, ScheduleGroup, SelectionGroup

# GRPO moves a policy with small steps: the rates of the usual GRPO recipes (TRL's default for full
# weights; LoRA's adapters start at zero and take a larger one)
REINFORCE_LR = {"full": 1e-6, "lora": 2e-5}
# OpenAI's compute_multiplier scales how much the model explores: samples per prompt, from this many
GENERATIONS_AT_MULTIPLIER_1 = 4


class ReinforceConfig(SelectionGroup, MergeGroup, PromptGroup, ScheduleGroup):
    """Reinforcement fine-tuning: the model samples answers to the data's prompts, a grader scores
    them, and GRPO moves it towards the better-scored ones, held near the starting model by a KL
    penalty."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")
    recommended_lr: ClassVar[dict[str, float]] = REINFORCE_LR

    method: Literal["reinforcement"] = Field("reinforcement", description="reinforcement: GRPO with a grader's rewards")
    model: str = Field(description="the starting model (often a tuned or distilled one): " + MODEL_HELP)
    data: str = Field(description="training JSONL: a prompt per line ('messages' ending with a user turn, or "
                                  "'input_text') and any fields the grader reads as {{item.NAME}}")
    evaluation_data: str | None = Field(None, description="validation JSONL of the same form: its mean reward picks "
                                                          "the checkpoint and stops early",
                                        validation_alias=AliasChoices("evaluation_data", "eval_data",
                                                                      "validation_data"))
    grader: str | dict[str, Any] = Field(description="the grader: a JSON file, or the grader object itself "
                                                      "(OpenAI's grader shapes: string_check, text_similarity, "
                                                      "python, score_model, multi, or mentor's task_metric)")
    # GRPO's steps are costly (every prompt sampled num_generations times): fewer than tuning's 300
    train_steps: int = Field(100, ge=1, description="optimizer steps (OpenAI's n_epochs is turned into steps)")
    batch_size: int = Field(8, ge=1, description="prompts per step (each sampled num_generations times)")
    num_generations: int = Field(GENERATIONS_AT_MULTIPLIER_1, ge=2,
                                 description="answers sampled per prompt; GRPO's baseline is their mean reward "
                                             "(OpenAI's compute_multiplier scales it)")
    learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended learning rate "
                                                                   "(1e-6 full, 2e-5 LoRA)")
    # the policy starts from a trained model and its first samples are its own: no warm-up is needed
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps with a linear learning-rate warm-up")
    kl_coeff: float = Field(0.04, ge=0, description="weight of the KL penalty to the starting model (GRPO's beta); "
                                                    "0 loads no reference model")
    temperature: float = Field(1.0, gt=0, description="sampling temperature while learning")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="how token losses are averaged (TRL's loss_type): dapo (over all tokens of the batch), "
                            "grpo (per answer, then per batch), dr_grpo (by a constant), bnpo")
    instruction: str | None = Field(None, description="a line put before every prompt, in training and when the model "
                                                      "is served (a start model's own instruction otherwise)")
    max_prompt_tokens: int = Field(512, ge=1, description="longer prompts keep their end")
    max_completion_tokens: int = Field(256, ge=1, description="longest sampled answer")
    eval_samples: int = Field(1, ge=1, description="answers sampled per validation prompt (their rewards averaged)")

    @field_validator("grader", mode="before")
    @classmethod
    def _last_given(cls, value):
        # a flag given twice on the command line (a job file's value overridden) arrives as a list from
        # pydantic-settings for a field that may be an object; the last one given wins, as for every flag
        return value[-1] if isinstance(value, list) and value else value

    def input_files(self) -> dict[str, str]:
        files = super().input_files()
        if isinstance(self.grader, str):  # a grader given by file: its contents are part of the job too
            files["grader"] = self.grader
        return files

    def grader_spec(self) -> tuple[dict | str, str]:
        """The grader's definition as given, and where it came from (for errors)."""
        if isinstance(self.grader, dict):
            return self.grader, "grader"
        path = Path(self.grader).expanduser()
        if not path.is_file():
            text = self.grader.strip()
            if text.startswith("{"):  # the object given inline on the command line
                return text, "grader"
            raise ValueError(f"grader file not found: {path}")
        return path.read_text(encoding="utf-8"), str(path)


def generations_for(compute_multiplier: float) -> int:
    """OpenAI's compute_multiplier as samples per prompt (at least 2: GRPO compares them)."""
    return max(2, round(GENERATIONS_AT_MULTIPLIER_1 * compute_multiplier))

