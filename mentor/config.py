"""Job parameters, named as the managed tuning services name them.

A job can be given as a YAML file holding these same fields; command-line flags override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mentor.errors import MentorError

# Recommended learning rates; `learning_rate_multiplier` scales these.
RECOMMENDED_LR = {"full": 5e-5, "lora": 5e-4}
ADAPTER_SIZES = (1, 4, 8, 16)


def _check_rank(v: int) -> int:
    if v not in ADAPTER_SIZES:
        raise ValueError(f"adapter_size must be one of {ADAPTER_SIZES}")
    return v


AdapterSize = Annotated[int, AfterValidator(_check_rank)]  # LoRA rank, as the cloud services accept it


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="model reference: hub id, folder, .gguf file, 'smollm2-135m' or 'tiny:NAME'")
    data: str = Field(description="training JSONL (text, chat or Gemini chat format)")
    output: str = Field(description="output folder")
    evaluation_data: str | None = None
    method: Literal["full", "lora"] = "lora"
    adapter_size: AdapterSize = 8
    train_steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate_multiplier: float = Field(1.0, gt=0)
    evaluation_interval: int = Field(20, ge=1)
    early_stopping: bool = True
    early_stopping_patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    early_stopping_min_delta: float = Field(0.001, ge=0, description="smallest gain in eval next-token accuracy that counts")
    checkpoint_selection: bool = True
    seed: int = 0
    max_input_tokens: int = Field(7168, ge=1)
    max_output_tokens: int = Field(1024, ge=1)
    max_examples: int = Field(10_000, ge=1)
    chat_template: Literal["auto", "never"] = "auto"
    merge_adapter: bool = False
    lora_target_modules: str | list[str] = "all-linear"
    bf16: Literal["auto", "on", "off"] = "auto"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)

    @property
    def tuning_method(self) -> str:
        """How the weights are trained: full or lora."""
        return self.method

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_LR[self.tuning_method] * self.learning_rate_multiplier


class DistillJobConfig(TuneConfig):
    """A job whose `method` names a distillation method; `model` is the student and `tuning`
    (full or LoRA) how the student's weights are trained."""

    method: str = "distill"
    teacher: str | None = Field(None, description="the teacher: a model reference or a teacher spec")
    tuning: Literal["full", "lora"] = "lora"

    @property
    def tuning_method(self) -> str:
        return self.tuning

    def tune_view(self) -> TuneConfig:
        """The student's tuning job, for the shared tuning components (setup, save)."""
        fields = {k: getattr(self, k) for k in TuneConfig.model_fields if k != "method"}
        return TuneConfig(**fields, method=self.tuning)


def load_config(path: str | None, overrides: dict, cls: type[BaseModel] = TuneConfig) -> BaseModel:
    """Merge a YAML job file with flag overrides (flags win) and validate the result."""
    fields: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise MentorError(f"job file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise MentorError(f"{p}: invalid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise MentorError(f"{p}: must hold a mapping of job fields")
        fields.update(loaded)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**fields)
    except ValidationError as err:
        where = f"{path}: " if path else ""
        lines = [f"  field '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in err.errors()]
        raise MentorError(f"{where}invalid job parameters:\n" + "\n".join(lines)) from None
