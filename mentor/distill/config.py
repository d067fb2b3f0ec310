"""Job parameters of distillation from a teacher's text: the tuning job's fields plus teacher,
method and task. One job kind per method (step-by-step, standard, finetune), each with this config.

`model` (or `student`) is the student, `method` the distillation method and `tuning` (full or
LoRA, default LoRA) how the student's weights are trained.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from mentor.tasks import TaskName
from mentor.training.config import StudentConfig

DISTILL_METHODS = ("step-by-step", "standard", "finetune")


class DistillConfig(StudentConfig):
    """Distillation from a teacher's completions (rationales and labels)."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data", "test_data", "prompt_examples")

    teacher: str | None = Field(None, description="hf:REF, openai:MODEL@URL, recorded:FILE or recorded:field=NAME")
    method: Literal["step-by-step", "standard", "finetune"] = Field(
        "step-by-step", description="step-by-step: gold or teacher labels + teacher rationales, multi-task; standard: "
                                    "teacher labels only; finetune: gold labels only (baseline)")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the label loss; 1 - alpha for the rationale loss")
    task: TaskName = Field("math", description="what is asked: prompts, answer parsing and metrics")
    prompt_examples: str | None = Field(None, description="few-shot CoT examples JSONL (input, rationale, label)")
    labels: list[str] | None = Field(None, description="label set for classify/nli")
    test_data: str | None = Field(None, description="test JSONL: student and teacher are scored on it at the end")
    validation_split: float = Field(
        0.0, ge=0.0, lt=0.5, description="without evaluation_data: this share of the training rows (at most 256) is "
        "held out as evaluation data, the same rows for every seed, so checkpoints and recipe variants are chosen on "
        "it and the test set is scored once (0: none held out)")
    label_field: str = Field("output_text", description="field holding the gold label to train on")
    answer_field: str = Field("output_text", description="field holding the gold answer to score against")
    filter_disagreements: bool = Field(False, description="drop examples where the teacher's answer disagrees with the gold one")
    mask_wrong_rationales: bool = Field(
        False, description="step-by-step with gold labels: train the label task on every example (as fine-tuning "
                           "does), the rationale task only where the teacher's rationale parsed and reached the gold answer")
    rationale_format: Literal["rationale", "rationale+label"] = Field(
        "rationale", description="rationale task target: the rationale alone (paper) or followed by the answer sentence")
    teacher_max_new_tokens: int = Field(256, ge=1, description="longest teacher completion")
    teacher_cache: str | None = Field(
        None, description="SQLite file of the teacher's answers (default: teacher_cache.sqlite in the output folder); "
        "give several jobs one file (a sweep, label then distill) and no prompt is paid for twice")
    teacher_concurrency: int = Field(8, ge=1, description="most teacher requests in flight at once; the number adapts "
                                                          "below it to what the server answers without queueing")
    label_max_new_tokens: int = Field(48, ge=1, description="longest student answer when testing")
    rationale_max_new_tokens: int = Field(256, ge=1, description="longest student rationale when testing")
    with_rationale: bool = Field(
        False, description="at test time also let the student write its rationale first and read the label from the "
                           "answer that closes it (implies rationale_format='rationale+label')")
    selection_metric: Literal["next_token_accuracy", "task"] = Field(
        "next_token_accuracy", description="what checkpoint selection and early stopping judge on the evaluation data: "
        "next-token accuracy of the gold labels (the cloud's rule), or the task metric of the student's generated "
        "answers (eval_task_score: accuracy, F1 for extract)")
    label_prefix: str = Field("[label] ", description="task prefix of the label task")
    rationale_prefix: str = Field("[rationale] ", description="task prefix of the rationale task")

    @model_validator(mode="after")
    def _rationale_then_label(self):
        # a student that reasons before it answers must have learned to end its rationale with the answer
        if self.with_rationale and self.rationale_format == "rationale":
            self.rationale_format = "rationale+label"
        return self


class StepByStepConfig(DistillConfig):
    method: Literal["step-by-step"] = Field("step-by-step", description="distilling step-by-step (Hsieh et al. 2023)")


class StandardConfig(DistillConfig):
    method: Literal["standard"] = Field("standard", description="standard distillation: the teacher's labels only")


class FinetuneConfig(DistillConfig):
    method: Literal["finetune"] = Field("finetune", description="the fine-tuning baseline: gold labels only")


CONFIGS = {"step-by-step": StepByStepConfig, "standard": StandardConfig, "finetune": FinetuneConfig}
