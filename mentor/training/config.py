"""The field groups every training kind is composed from, and the tuning job's config.

A group is a small base class owning one concern (the model and how it is tuned, what makes it fit
a device, the training schedule, evaluation and checkpoint selection, data, token limits, ...): each
field is declared once, with one default and one description, and a kind's config lists the
groups it reads, so its `--help` shows only what it uses. Where a kind needs another default it
overrides that one field in its own class, with the reason. Names are the managed tuning
services': `tuning` is how the weights are trained (full or LoRA), `method` the kind's method.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import AfterValidator, AliasChoices, BaseModel, Field, model_validator

from mentor.jobs.config import AdapterSize, JobConfig, Seed, check_learning_rate

# Recommended learning rates; `learning_rate_multiplier` scales these.
RECOMMENDED_LR = {"full": 5e-5, "lora": 5e-4}


def _one_name_is_a_name(v: str | list[str]) -> str | list[str]:
    # a comma-separated flag always gives a list; PEFT needs the single keyword 'all-linear' as a string
    return v[0] if isinstance(v, list) and len(v) == 1 and v[0] == "all-linear" else v


LoraTargets = Annotated[str | list[str], AfterValidator(_one_name_is_a_name)]
MODEL_HELP = ("model reference: hub id, folder, .gguf file, mentor output, 'smollm2-135m', 'tiny:NAME', "
              "'random:NAME' (a real architecture at real size with random weights, e.g. random:llama-1b) or "
              "'prune:REF:layers=0-5,12-17' (REF keeping only those decoder layers)")
ADAPTER_SIZE_HELP = "LoRA rank: any positive number; 1, 4, 8 or 16 are the managed services' sizes"
# TrainingArguments' names of the optimizers offered; the last three are bitsandbytes'
Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit",
                    "paged_adamw_32bit"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
BNB_OPTIMIZERS = frozenset(OPTIMIZERS[4:])


class FieldGroup(BaseModel):
    """Base of the field groups: mixins that add fields (and the checks and properties of those
    fields) to a kind's config, never a job of their own."""


class TuningGroup(FieldGroup):
    """The model trained and how its weights train: all of them, or LoRA adapters of a rank."""

    model: str = Field(description=MODEL_HELP)
    tuning: Literal["full", "lora"] = Field("lora", description="how the weights are trained: all of them, or LoRA adapters")
    adapter_size: AdapterSize = Field(8, description=ADAPTER_SIZE_HELP)
    lora_target_modules: LoraTargets = Field("all-linear", description="LoRA target modules: 'all-linear' or names")


class FitConfig(JobConfig, TuningGroup):
    """How the weights are held and trained: what makes a big model fit a device, shared by every kind
    that trains weights (tuning, distillation, DPO, reward model, RLHF)."""

    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="recompute activations in the backward pass instead of keeping them (less memory, "
                            "about a third slower); auto: on only when the memory estimate says the job does not "
                            "fit without it")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="LoRA only: hold the frozen base quantized with bitsandbytes: 4bit (QLoRA: NF4, double "
                            "quantization) or 8bit")
    lora_variant: Literal["lora", "dora"] = Field("lora", description="lora, or dora (weight-decomposed LoRA: a "
                                                                      "magnitude per output, slower steps)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scaling alpha (the update is scaled by "
                                                             "alpha / rank); default twice the adapter size")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA adapters' input")
    optimizer: Optimizer = Field(
        "adamw_torch", description="adamw_torch, adamw_torch_fused, adafactor, sgd, or bitsandbytes' adamw_8bit, "
                                   "paged_adamw_8bit, paged_adamw_32bit (8-bit optimizer state: a quarter of AdamW's)")
    liger_kernel: Literal["auto", "on", "off"] = Field(
        "auto", description="Liger kernels (fused RMSNorm, RoPE, SwiGLU; needs CUDA and liger-kernel); auto: used "
                            "where both are there")
    torch_compile: bool = Field(False, description="compile the model with torch.compile (a slow first step, then "
                                                   "faster ones)")
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast; auto: where the hardware computes "
                                                                  "it natively")

    @model_validator(mode="after")
    def _quantized_base_is_frozen(self):
        if self.quantization != "none" and self.tuning == "full":
            raise ValueError(f"quantization {self.quantization} holds a frozen base that only LoRA adapters train "
                             "on: use tuning lora, or quantization none for full tuning")
        return self


class TrainingGroup(FitConfig):
    """What every training stage reads besides its steps and rate (see `training_arguments`)."""

    seed: Seed = Field(0, description="random seed (data order, initialisation, sampling)")
    batch_size: int = Field(8, ge=1, description="examples per step (a preference pair, or a prompt in RL, is one)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps with a linear learning-rate warm-up")
    # checkpoints are written at every evaluation, so a kind that never selects one still has this interval
    evaluation_interval: int = Field(20, ge=1, description="steps between evaluations (and checkpoints)")
    max_examples: int = Field(10_000, ge=1, description="most examples read from each data file")

    @property
    def learning_rate(self) -> float:
        """The rate this kind's own training runs at: its recommended rate times its multiplier."""
        raise NotImplementedError(f"{type(self).__name__} names no learning rate")


class ScheduleGroup(TrainingGroup):
    """One training stage's steps and learning rate, as a multiplier of the kind's recommended rate."""

    recommended_lr: ClassVar[dict[str, float]] = RECOMMENDED_LR

    train_steps: int = Field(300, ge=1, description="optimizer steps")
    learning_rate_multiplier: float = Field(1.0, gt=0, description="times the recommended learning rate "
                                                                   "(5e-5 full, 5e-4 LoRA)")

    @property
    def learning_rate(self) -> float:
        return self.recommended_lr[self.tuning] * self.learning_rate_multiplier

    @model_validator(mode="after")
    def _sane_learning_rate(self):
        check_learning_rate(self.learning_rate, "learning_rate_multiplier")
        return self


class DataGroup(FieldGroup):
    """Training and evaluation data files (JSONL)."""

    data: str = Field(description="training JSONL (text, chat or Gemini chat format)")
    evaluation_data: str | None = Field(None, description="evaluation JSONL (10 to 256 examples recommended)",
                                        validation_alias=AliasChoices("evaluation_data", "eval_data"))


class SequenceGroup(FieldGroup):
    """Token limits of one example (mentor's names; the preference kinds take the cloud's)."""

    max_input_tokens: int = Field(7168, ge=1, description="longer inputs keep their end")
    max_output_tokens: int = Field(1024, ge=1, description="longer outputs keep their start")


class PromptGroup(FieldGroup):
    """How prompts are rendered for the model."""

    chat_template: Literal["auto", "never"] = Field("auto", description="render prompts with the tokenizer's chat "
                                                                        "template when it has one (auto), or never")


class SelectionGroup(FieldGroup):
    """What the evaluations decide: early stopping, which checkpoint is the result, which are kept."""

    early_stopping: bool = Field(True, description="with evaluation data: stop when the evaluation metric stops improving")
    early_stopping_patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    early_stopping_min_delta: float = Field(0.001, ge=0, description="smallest gain in the evaluation metric that counts")
    checkpoint_selection: bool = Field(True, description="with evaluation data: the best evaluation's checkpoint is the "
                                                         "result, not the last")
    keep_checkpoints: bool = Field(False, description="keep every evaluation's checkpoint after the job, so any can "
                                                      "be promoted to a model of its own (`mentor models promote`)")


class MergeGroup(FieldGroup):
    """A LoRA-tuned model saved a second time with its adapter merged in."""

    merge_adapter: bool = Field(False, description="LoRA: also save base + adapter merged (merged/)")


class PackingGroup(FieldGroup):
    """Padding-free batches: for kinds whose batches are the tuning collator's (not DPO's pairs, not a
    teacher's padded rows)."""

    packing: bool = Field(False, description="padding-free batches: a batch's examples in one row, each with its own "
                                             "positions and attention kept within it (decoder-only models)")


class StudentGroup(FieldGroup):
    """The model trained is a student, given as `model` or `student`."""

    model: str = Field(description="the student: " + MODEL_HELP, validation_alias=AliasChoices("model", "student"))


# A kind lists its groups in reverse of the order its --help shows them: the data group last (shown
# first), the training chain (model, fit, schedule) before it, the other groups' flags after those.
class ExamplesGroup(PromptGroup, SequenceGroup, ScheduleGroup, DataGroup):
    """Training on a data file of examples, rendered as prompts, within token limits, on one schedule: what
    the tuning setup (`training.setup`) reads, for tuning, text and white-box distillation, and DPO."""


class TuneConfig(SelectionGroup, PackingGroup, MergeGroup, ExamplesGroup):
    """Supervised tuning (full or LoRA) on text, chat or Gemini-chat JSONL."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")

    method: Literal["supervised"] = Field("supervised", description="supervised: learn the data's outputs")


class StudentConfig(StudentGroup, TuneConfig):
    """A tuning job whose model is a student learning from a teacher's text; `method` names the
    distillation method and `tuning` how the student's weights are trained."""

    method: str = Field(description="distillation method")
    teacher: str | None = Field(None, description="the teacher")
