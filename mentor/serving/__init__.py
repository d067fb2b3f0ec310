"""Online and batch prediction with tuned models."""

from mentor.serving.predict import Predictor, predict_file

__all__ = ["Predictor", "predict_file"]
