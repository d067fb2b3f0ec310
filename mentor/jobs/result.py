"""The handle a finished job returns (light: importing it loads no ML library)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mentor.errors import DamagedJobFile
from mentor.job_files import RESULT_FILE


@dataclass
class TunedModel:
    """A handle to a finished job: where the model is and how it did."""

    output: str
    model_path: str
    base_model: str
    method: str  # the job kind that made it ('tune', 'dpo', 'reward-model', 'logit', ...), as every kind
    # says it; results written before said it in words of their own ('supervised (lora)', 'distill-logit')
    best_step: int | None
    steps_run: int
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    kind: str | None = None
    tuning: str | None = None  # 'full' or 'lora'; None for a job that trains nothing (a batch)

    @property
    def described(self) -> str:
        """The method as people read it: 'dpo (lora)'."""
        return f"{self.method} ({self.tuning})" if self.tuning else self.method

    def predict(self, prompts: list[str] | str, **kwargs) -> list[str] | str:
        from mentor.serving.predict import Predictor

        return Predictor(self.model_path).predict(prompts, **kwargs)

    def summary(self) -> str:
        lines = [f"model: {self.model_path}  ({self.described} on {self.base_model})",
                 f"steps run: {self.steps_run}" + (f", best eval step: {self.best_step}" if self.best_step else "")]
        lines += [f"  {k}: {_shown(k, v)}" for k, v in self.metrics.items()]
        if (seconds := (self.extra or {}).get("seconds")) is not None:
            lines.append(f"training time: {seconds:.1f} s")
        if isinstance(memory := (self.extra or {}).get("memory"), dict) and memory.get("total_gib") is not None:
            peak = memory.get("measured_peak_gib")
            lines.append(f"memory: estimated {memory['total_gib']:.2f} GiB before loading"
                         + (f", peak {peak:.2f} GiB" if peak else "")
                         + f" ({memory.get('device')}; gradient checkpointing "
                           f"{'on' if memory.get('gradient_checkpointing') else 'off'})")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: str | Path) -> TunedModel:
        """The result a job wrote; a file that is not one (damaged, edited by hand) is a DamagedJobFile."""
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError):
            raise DamagedJobFile(f"{path} is damaged (not the result mentor writes); restore it, or delete the "
                                 "folder to run the job over") from None


def read_result(folder: str | Path) -> TunedModel:
    """The result a finished job wrote in its folder; a missing or damaged one is a DamagedJobFile."""
    return TunedModel.read(Path(folder) / RESULT_FILE)


def _shown(name: str, value) -> str:
    if "num_" in name and isinstance(value, float) and value.is_integer():
        return str(int(value))  # a count the trainer logged as a float
    return f"{value:.4f}" if isinstance(value, float) else str(value)
