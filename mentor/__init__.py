"""mentor: tune and distill language models on your own hardware."""

from mentor.config import TuneConfig
from mentor.result import TunedModel

__version__ = "0.1.0"


def tune(config: TuneConfig | None = None, **fields) -> TunedModel:
    """Supervised tuning (full or LoRA); see `mentor.config.TuneConfig` for the fields."""
    from mentor.recipes.tune import tune as _tune

    return _tune(config, **fields)


__all__ = ["TuneConfig", "TunedModel", "tune"]
