"""Online and batch prediction with tuned models, on the one batched-generation path."""

from mentor.serving.generate import (
    GeneratedText,
    SamplingParams,
    generate,
    generate_stream,
)
from mentor.serving.predict import Predictor, predict_file

__all__ = ["GeneratedText", "Predictor", "SamplingParams", "generate", "generate_stream", "predict_file"]
