"""Job parameters of white-box distillation: one config class per method, composed from groups.

`model` is the student and `tuning` (full or LoRA) how its weights are trained. What every method
shares (the tuning job's data, schedule, evaluation and checkpoint fields, the teacher, `kd_ratio`)
is `WhiteboxConfig`; each method's config adds the groups it reads, so `mentor distill --method
logit --help` lists logit's settings and no feature or relation ones:

- `LogitConfig`: the response group (divergence, beta, temperature, on-policy steps) and offline logits;
- `FeatureConfig`: the layer map and `feature_loss`;
- `RelationConfig`: the layer map, `relation_level` and `relation_max_tokens`;
- `SelfConfig`: the response group, `ema_decay`, and a teacher that may be left out (an EMA).

A config names the class that computes its loss (`method_class`, a Method subclass or
"module:Class", imported only when a job runs); `mentor/recipes/__init__.py` registers each as a
job kind of its method's name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mentor.errors import MentorError
from mentor.training.config import ExamplesGroup, FieldGroup, MergeGroup, SelectionGroup, StudentGroup

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
SERVED_TEACHERS = ("openai", "openai-chat", "openai-completions")  # `mentor.teachers`' server specs


def is_served(spec: str | None) -> bool:
    """Whether a teacher is served (`openai:MODEL@URL`): `mentor.teachers.logprobs.is_served`, here
    without importing the teachers (they pull in torch, which the command line starts without)."""
    return bool(spec) and spec.partition(":")[0] in SERVED_TEACHERS
# Divergence -> TRL GKD's generalized-JSD beta (0 = forward KL(teacher || student), 1 = reverse KL).
DIVERGENCE_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}
TEACHER_HELP = ("teacher model reference (loaded with its weights); for method logit with offline_logits also a "
                "served teacher, openai:MODEL@URL, with the student's tokenizer")


class WhiteboxConfig(SelectionGroup, MergeGroup, StudentGroup, ExamplesGroup):
    """White-box distillation: the student learns from the teacher's weights (logits, hidden states).
    The base of every method's config; a method's own config fixes `method` and adds its groups."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")
    teacher_is_a_model: ClassVar[bool] = True  # loaded with its weights, never a teacher spec (hf:, openai:)
    # the Method subclass computing this config's loss, or "module:Class" (imported when a job runs)
    method_class: ClassVar[Any] = None
    summary: ClassVar[str] = ""  # the job kind's one-line summary
    # the teacher's logits and hidden states are aligned to padded rows
    retired_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "packing": (False, "packing is for supervised tuning and text distillation, not white-box methods")}

    method: str = Field(description="white-box distillation method")
    teacher: str | None = Field(None, description=TEACHER_HELP)
    # a student is the smaller model, so all of its weights train by default (tuning's default is LoRA)
    tuning: Literal["full", "lora"] = Field("full", description="how the student's weights are trained")
    kd_ratio: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss; 1 - kd_ratio goes "
                                                         "to the ordinary next-token loss on the data")

    @field_validator("model")
    @classmethod
    def _student(cls, v: str) -> str:
        if not v:
            raise ValueError("give a student model")
        return v

    @model_validator(mode="after")
    def _needs_a_teacher(self):
        if not self.teacher and not self.uses_ema_teacher:
            raise ValueError(f"method '{self.method}' needs a teacher model")
        return self

    @model_validator(mode="after")
    def _served_teacher_gives_logprobs_only(self):
        if self.teacher and is_served(self.teacher) and not self.takes_served_teacher:
            raise ValueError(f"teacher {self.teacher!r} is served: it gives top-k log-probs only, which method "
                             "'logit' with offline_logits reads; this method needs the teacher's weights")
        return self

    @property
    def takes_served_teacher(self) -> bool:
        """Whether this job can learn from a served teacher's top-k log-probs (`openai:MODEL@URL`)."""
        return False

    @property
    def uses_ema_teacher(self) -> bool:
        """The teacher is an average of the student itself (self-distillation without a teacher)."""
        return False

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["method"].default


class ResponseGroup(FieldGroup):
    """Response-based distillation: next-token distributions compared, optionally on the student's samples."""

    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="how next-token distributions are compared")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD interpolation (divergence 'jsd')")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of both models' logits")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="share of steps trained on student-generated "
                                                                   "outputs (TRL GKD's lambda)")
    max_new_tokens: int = Field(64, ge=1, description="length of on-policy generations")

    @property
    def beta_for_divergence(self) -> float:
        return DIVERGENCE_BETA.get(self.divergence, self.beta)


class OfflineLogitsGroup(FieldGroup):
    """The teacher's top-k log-probs computed once, on disk, so training runs without the teacher."""

    offline_logits: bool = Field(False, description="compute the teacher's top-k log-probs once, on disk; "
                                                    "student training then runs without the teacher")
    top_k: int = Field(64, ge=1, description="log-probs kept per position for offline logits")
    teacher_logits_dir: str | None = Field(None, description="where offline logits live "
                                                             "(default OUTPUT/teacher_logits)")
    shard_examples: int = Field(256, ge=1, description="examples per offline-logits shard")


class LayerMapGroup(FieldGroup):
    """Which student hidden states are compared with which of the teacher's."""

    layer_map: str | None = Field(None, description="student:teacher hidden-state layers, e.g. '1:2,2:4' "
                                                    "(0 is the embedding output); default: the method's")


class LogitConfig(OfflineLogitsGroup, ResponseGroup, WhiteboxConfig):
    """White-box distillation, method 'logit'."""

    method_class: ClassVar[Any] = "mentor.whitebox.logit:LogitKD"
    summary: ClassVar[str] = "white-box: match the teacher's next-token distributions (KL / JSD, offline top-k, on-policy)"

    method: Literal["logit"] = Field("logit", description="logit: the teacher's next-token distributions")

    @model_validator(mode="after")
    def _offline_is_off_policy(self):
        if self.offline_logits and self.on_policy_fraction > 0:
            raise ValueError("on-policy training needs the live teacher; it cannot use offline_logits")
        if self.teacher and is_served(self.teacher) and self.offline_logits and self.temperature != 1.0:
            # a server's log-probs are at temperature 1, and its top k cannot be re-softened exactly
            # without the rest of the distribution
            raise ValueError(f"a served teacher's log-probs are at temperature 1: set temperature 1 (got "
                             f"{self.temperature}) or load the teacher in process")
        return self

    @property
    def takes_served_teacher(self) -> bool:
        return self.offline_logits


class FeatureConfig(LayerMapGroup, WhiteboxConfig):
    """White-box distillation, method 'feature'."""

    method_class: ClassVar[Any] = "mentor.whitebox.feature:FeatureKD"
    summary: ClassVar[str] = "white-box: match the teacher's hidden states through learned projections"

    method: Literal["feature"] = Field("feature", description="feature: the teacher's hidden states")
    feature_loss: Literal["mse", "cosine"] = Field("mse", description="distance between hidden states")


class RelationConfig(LayerMapGroup, WhiteboxConfig):
    """White-box distillation, method 'relation'."""

    method_class: ClassVar[Any] = "mentor.whitebox.relation:RelationKD"
    summary: ClassVar[str] = "white-box: match the similarity structure of the teacher's representations in a batch"

    method: Literal["relation"] = Field("relation", description="relation: the similarities of the teacher's "
                                                                "representations within a batch")
    relation_level: Literal["token", "sequence"] = Field(
        "token", description="similarities between tokens or between pooled sequences of a batch")
    relation_max_tokens: int = Field(256, ge=2, description="token relations use at most this many tokens per batch")

    @model_validator(mode="after")
    def _sequences_to_compare(self):
        if self.relation_level == "sequence" and self.batch_size < 2:
            raise ValueError("relation_level 'sequence' compares the sequences of a batch: batch_size must be 2 "
                             "or more (with 1 the loss is always zero)")
        return self


class SelfConfig(ResponseGroup, WhiteboxConfig):
    """White-box distillation, method 'self'."""

    method_class: ClassVar[Any] = "mentor.whitebox.self_distill:SelfDistillation"
    summary: ClassVar[str] = "self-distillation from a tuned copy, an earlier checkpoint or an EMA of the student"

    method: Literal["self"] = Field("self", description="self: a teacher of the student's own architecture")
    # the one method whose teacher may be left out: the student's own average is the teacher then
    teacher: str | None = Field(None, description="teacher model of the student's architecture; none (or 'ema') "
                                                   "means an exponential moving average of the student")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="decay of the EMA teacher (without a teacher)")

    @property
    def uses_ema_teacher(self) -> bool:
        return self.teacher is None or self.teacher == "ema"


CONFIGS: dict[str, type[WhiteboxConfig]] = {c.method_name(): c for c in (LogitConfig, FeatureConfig, RelationConfig,
                                                                          SelfConfig)}


def _retire_other_methods_fields() -> None:
    """Before one config per method, every white-box job's config.yaml held every method's fields at
    their defaults: each method retires the others' (see `JobConfig.retired_fields`)."""
    everyone: dict[str, Any] = {}
    for cls in CONFIGS.values():
        everyone.update({name: field.default for name, field in cls.model_fields.items() if not field.is_required()})
    for method, cls in CONFIGS.items():
        owners = {name: [m for m, c in CONFIGS.items() if name in c.model_fields] for name in everyone}
        cls.retired_fields = {**cls.retired_fields, **{
            name: (default, f"method '{method}' does not read it (a setting of {', '.join(owners[name])})")
            for name, default in everyone.items() if name not in cls.model_fields}}


_retire_other_methods_fields()


def config_for(method: str) -> type[WhiteboxConfig]:
    """The config class of a built-in white-box method."""
    if method not in CONFIGS:
        raise MentorError(f"unknown white-box method '{method}'; known: {', '.join(CONFIGS)}")
    return CONFIGS[method]
