"""The on-policy distillation job's parameters: the tuning job's data, schedule and selection
fields (the student is `model`), the teacher, and how the steps learn from it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mentor.tasks import TaskName
from mentor.training.config import MODEL_HELP, ExamplesGroup, MergeGroup, SelectionGroup, StudentGroup
from mentor.whitebox.config import is_served


class OnPolicyConfig(SelectionGroup, MergeGroup, StudentGroup, ExamplesGroup):
    """On-policy distillation: the student learns the teacher's next-token distributions on
    completions it samples itself (generalized knowledge distillation), mixed with supervised steps
    on the data's outputs."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")
    # the job service keeps a teacher a model reference (loaded with its weights), unless it is served
    # (openai:MODEL@URL), which it checks against the servers its owner allowed
    teacher_is_a_model: ClassVar[bool] = True

    method: Literal["on-policy"] = Field("on-policy", description="on-policy: the teacher scores the student's "
                                                                  "own samples, token by token")
    teacher: str = Field(description="the teacher: loaded with its weights in the training process (" + MODEL_HELP
                         + "), or served, openai:MODEL@URL (its top-k log-probs of the student's samples; the "
                           "student's tokenizer, temperature 1)")
    top_k: int = Field(64, ge=1, description="a served teacher's log-probs asked per position: the divergence is "
                                             "taken over these tokens and the rest of the mass (an in-process "
                                             "teacher gives its whole distribution)")
    # a student is the smaller model, so all of its weights train by default (tuning's default is LoRA)
    tuning: Literal["full", "lora"] = Field("full", description="how the student's weights are trained")
    beta: float = Field(1.0, ge=0, le=1, description="the divergence minimised: 1 reverse KL(student || teacher) "
                                                     "(mode-seeking), 0 forward KL(teacher || student), between: "
                                                     "the generalized JSD at that beta")
    lmbda: float = Field(1.0, ge=0, le=1,
                         description="share of steps on the student's own samples (GKD's lambda); the others are "
                                     "supervised steps on the data's outputs (the tuning loss); 0 is plain tuning")
    # the tuning group's limit, read twice here: the data's outputs kept, and the longest completion sampled
    max_output_tokens: int = Field(1024, ge=1, description="longest completion the student samples; longer data "
                                                           "outputs keep their start")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the student's completions; both "
                                                      "distributions are compared at it too")
    task: TaskName | None = Field(None, description="what the data asks (math, choice, nli, classify, extract): the "
                                                    "student's greedy answers to the validation prompts are parsed and "
                                                    "scored as mentor eval scores them (eval_task_*)")
    labels: list[str] | None = Field(None, description="label set for classify/nli")
    selection_metric: Literal["divergence", "task"] | None = Field(
        None, description="what checkpoint selection and early stopping judge on the validation data: divergence (the "
                          "student's samples' divergence to the teacher, lower is better) or task (the task metric of "
                          "the student's greedy answers against the data's outputs, greater is better); default task "
                          "when the job names a task and has evaluation data, else divergence")

    @field_validator("teacher")
    @classmethod
    def _a_teacher(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give a teacher model")
        return v

    @model_validator(mode="after")
    def _selected_on(self):
        if self.selection_metric is None:
            self.selection_metric = "task" if self.task and self.evaluation_data else "divergence"
        elif self.selection_metric == "task" and self.task is None:
            raise ValueError("selection_metric 'task' scores answers of a task: name the task (task math, choice, "
                             "nli, classify or extract)")
        return self

    @model_validator(mode="after")
    def _served_at_temperature_1(self):
        if is_served(self.teacher) and self.temperature != 1.0:
            # a server's log-probs are at temperature 1, and its top k cannot be re-softened exactly
            # without the rest of the distribution
            raise ValueError(f"a served teacher's log-probs are at temperature 1: set temperature 1 (got "
                             f"{self.temperature}) or load the teacher in process")
        return self
