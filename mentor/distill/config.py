"""Distilling step-by-step job parameters: the tuning job's fields plus teacher, method and task.

`model` is the student, `method` the distillation method and `tuning` (full or LoRA, default
LoRA) how the student's weights are trained.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mentor.config import DistillJobConfig

DISTILL_METHODS = ("step-by-step", "standard", "finetune")
TASKS = ("math", "choice", "nli", "classify", "extract")


class DistillConfig(DistillJobConfig):
    teacher: str | None = Field(None, description="hf:REF, openai:MODEL@URL, recorded:FILE or recorded:field=NAME")
    method: Literal["step-by-step", "standard", "finetune"] = "step-by-step"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the label loss; 1 - alpha for the rationale loss")
    task: Literal["math", "choice", "nli", "classify", "extract"] = "math"
    prompt_examples: str | None = Field(None, description="few-shot CoT examples JSONL (input, rationale, label)")
    labels: list[str] | None = Field(None, description="label set for classify/nli")
    test_data: str | None = None
    label_field: str = Field("output_text", description="field holding the gold label to train on")
    answer_field: str = Field("output_text", description="field holding the gold answer to score against")
    filter_disagreements: bool = Field(False, description="drop examples where the teacher's answer disagrees with the gold one")
    mask_wrong_rationales: bool = Field(
        False, description="step-by-step with gold labels: train the label task on every example (as fine-tuning "
                           "does), the rationale task only where the teacher's rationale parsed and reached the gold answer")
    rationale_format: Literal["rationale", "rationale+label"] = Field(
        "rationale", description="rationale task target: the rationale alone (paper) or followed by the answer sentence")
    teacher_max_new_tokens: int = 256
    teacher_concurrency: int = 8
    label_max_new_tokens: int = 48
    rationale_max_new_tokens: int = 256
    with_rationale: bool = Field(
        False, description="at test time also let the student write its rationale first and read the label from the "
                           "answer that closes it (implies rationale_format='rationale+label')")
    label_prefix: str = "[label] "
    rationale_prefix: str = "[rationale] "

    @model_validator(mode="after")
    def _rationale_then_label(self):
        # a student that reasons before it answers must have learned to end its rationale with the answer
        if self.with_rationale and self.rationale_format == "rationale":
            self.rationale_format = "rationale+label"
        return self
