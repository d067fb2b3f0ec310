"""Job parameters of white-box distillation: the tuning fields plus teacher and method settings.

`model` is the student and `tuning` (full or LoRA) how its weights are trained; `method` names the
distillation method (logit, feature, relation, self). Everything the tuning recipe knows (data,
steps, evaluation, early stopping, checkpoints) is the same field with the same default, so a
white-box job reads like a tuning job with a teacher.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, create_model, field_validator, model_validator

from mentor.training.config import StudentConfig

METHOD_NAMES = ("logit", "feature", "relation", "self")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# Divergence -> TRL GKD's generalized-JSD beta (0 = forward KL(teacher || student), 1 = reverse KL).
DIVERGENCE_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


class WhiteboxConfig(StudentConfig):
    """White-box distillation: the student learns from the teacher's weights (logits, hidden states)."""

    input_fields: ClassVar[tuple[str, ...]] = ("data", "evaluation_data")
    teacher_is_a_model: ClassVar[bool] = True  # loaded with its weights, never a teacher spec (hf:, openai:)

    method: str = Field("logit", description="white-box distillation method (a registered name: logit, feature, "
                                             "relation, self, or one of your own)")
    teacher: str | None = Field(None, description="teacher model reference; for method 'self' none (or 'ema') "
                                                   "means an exponential moving average of the student")
    tuning: Literal["full", "lora"] = Field("full", description="how the student's weights are trained")
    kd_ratio: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss; 1 - kd_ratio goes "
                                                         "to the ordinary next-token loss on the data")

    # response-based (logit) and self-distillation
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="how next-token distributions are compared (logit, self)")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD interpolation (divergence 'jsd')")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of both models' logits")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="share of steps trained on student-generated "
                                                                   "outputs (TRL GKD's lambda)")
    max_new_tokens: int = Field(64, ge=1, description="length of on-policy generations")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="self-distillation with an EMA teacher")

    # offline teacher logits
    offline_logits: bool = Field(False, description="compute the teacher's top-k log-probs once, on disk; "
                                                    "student training then runs without the teacher")
    top_k: int = Field(64, ge=1, description="log-probs kept per position for offline logits")
    teacher_logits_dir: str | None = Field(None, description="where offline logits live "
                                                             "(default OUTPUT/teacher_logits)")
    shard_examples: int = Field(256, ge=1, description="examples per offline-logits shard")

    # feature-based and relation-based
    feature_loss: Literal["mse", "cosine"] = Field("mse", description="feature method: distance between hidden states")
    layer_map: str | None = Field(None, description="student:teacher hidden-state layers, e.g. '1:2,2:4' "
                                                    "(0 is the embedding output); default uniform")
    relation_level: Literal["token", "sequence"] = Field(
        "token", description="relation-based: similarities between tokens or between pooled sequences of a batch")
    relation_max_tokens: int = Field(256, ge=2, description="token relations use at most this many tokens per batch")

    @field_validator("model")
    @classmethod
    def _student(cls, v: str) -> str:
        if not v:
            raise ValueError("give a student model")
        return v

    @model_validator(mode="after")
    def _needs(self):
        if self.method != "self" and not self.teacher:
            raise ValueError(f"method '{self.method}' needs a teacher model")
        if self.method == "relation" and self.relation_level == "sequence" and self.batch_size < 2:
            raise ValueError("relation_level 'sequence' compares the sequences of a batch: batch_size must be 2 "
                             "or more (with 1 the loss is always zero)")
        if self.offline_logits and self.method != "logit":
            raise ValueError("offline_logits is for method 'logit' (self-distillation and feature/relation "
                             "methods need the live teacher)")
        if self.offline_logits and self.on_policy_fraction > 0:
            raise ValueError("on-policy training needs the live teacher; it cannot use offline_logits")
        if self.on_policy_fraction > 0 and self.method not in ("logit", "self"):
            raise ValueError("on_policy_fraction applies to methods 'logit' and 'self'")
        if self.packing:  # the teacher's logits and hidden states are aligned to padded rows
            raise ValueError("packing is for supervised tuning and text distillation, not white-box methods")
        return self


    @property
    def beta_for_divergence(self) -> float:
        return DIVERGENCE_BETA.get(self.divergence, self.beta)

    @property
    def uses_ema_teacher(self) -> bool:
        return self.method == "self" and (self.teacher is None or self.teacher == "ema")



def config_for(method: str) -> type[WhiteboxConfig]:
    """The config of one white-box method's job kind: WhiteboxConfig with the method fixed."""
    name = "".join(part.capitalize() for part in method.replace("-", "_").split("_")) + "WhiteboxConfig"
    return create_model(name, __base__=WhiteboxConfig, __doc__=f"White-box distillation, method '{method}'.",
                        method=(Literal[method], Field(method, description=f"white-box method '{method}'")))


CONFIGS = {name: config_for(name) for name in METHOD_NAMES}
