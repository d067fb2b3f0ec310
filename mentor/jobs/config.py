"""What every job kind's config shares, and reading one from a YAML job file plus overrides.

A job kind's config is a pydantic model: each field has its type, default and description, and
from it the command line, YAML job files, the Python API (and the REST bodies) are derived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mentor.errors import MentorError

# the cloud services' menu of LoRA ranks: the documented suggestions; any positive rank is taken, as
# PEFT and every other tuning tool take it
ADAPTER_SIZES = (1, 4, 8, 16)
AdapterSize = Annotated[int, Field(ge=1)]  # LoRA rank
# numpy seeds only from 0 to 2**32 - 1, and transformers' set_seed seeds numpy: checked here, not
# after the job started
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# no optimizer step survives a learning rate above this: the first steps turn every weight to NaN
MAX_LEARNING_RATE = 1.0


def check_learning_rate(rate: float, multiplier_field: str) -> None:
    """Refuse a multiplier whose learning rate no training survives (a typo, or 1e30)."""
    if rate > MAX_LEARNING_RATE:
        raise ValueError(f"{multiplier_field} makes the learning rate {rate:g}, above {MAX_LEARNING_RATE:g}: "
                         "training would diverge at once")


class JobConfig(BaseModel):
    """Base of every job kind's config: unknown fields are refused, `output` names the job folder."""

    # inf and nan are refused in every float field (a rate of .inf trained NaN weights and "succeeded")
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True, allow_inf_nan=False)

    # fields that name input files: their contents (sha256) are part of the job's identity
    input_fields: ClassVar[tuple[str, ...]] = ()

    # fields this kind had once and never reads: {name: (its old default, why it went)}. A job folder's
    # config.yaml written by an earlier mentor holds every field it had; at its old default such a field
    # is dropped (the same job), set to anything else it is refused with the reason, since it would do nothing
    retired_fields: ClassVar[dict[str, tuple[Any, str]]] = {}

    output: str = Field(description="output folder (the job folder: model, metrics, state, events)")

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.retired_fields:
            return data
        data = dict(data)
        for name, (old_default, why) in cls.retired_fields.items():
            if name in data and data.pop(name) != old_default:
                raise ValueError(f"{name}: {why}")
        return data

    def input_files(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in self.input_fields if getattr(self, name, None)}


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(field, message) for every error pydantic found."""
    return [(".".join(map(str, e["loc"])) or "(job)", e["msg"].removeprefix("Value error, ")) for e in err.errors()]


def build_config(cls: type[JobConfig], fields: dict[str, Any], source: str | None = None) -> JobConfig:
    """Validate fields into a config; a one-message MentorError naming every bad field otherwise."""
    try:
        return cls(**fields)
    except ValidationError as err:
        where = f"{source}: " if source else ""
        lines = [f"  field '{f}': {m}" for f, m in validation_problems(err)]
        raise MentorError(f"{where}invalid job parameters:\n" + "\n".join(lines)) from None


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The fields of a YAML job file (a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise MentorError(f"job file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise MentorError(f"{p}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise MentorError(f"{p}: must hold a mapping of job fields")
    return loaded


def field_names(cls: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """The same fields under their own names (a job file may use an alias: `student` for `model`),
    so an override by either name replaces the file's value instead of clashing with it."""
    names = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        for other in (getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else [])):
            if isinstance(other, str):
                names[other] = name
    return {names.get(k, k): v for k, v in fields.items()}


def load_config(cls: type[JobConfig], path: str | Path | None, overrides: dict[str, Any]) -> JobConfig:
    """A job file's fields with overrides on top: the fields given on the command line, an explicit
    null among them (`--teacher null` clears the file's teacher)."""
    fields = field_names(cls, read_job_file(path)) if path else {}
    fields.pop("kind", None)  # a job folder's config.yaml names its kind; the caller chose the kind already
    fields.update(field_names(cls, overrides))
    return build_config(cls, fields, str(path) if path else None)
