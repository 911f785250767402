"""The HERBS model; knows nothing about Accelerate or the data pipeline."""

from herbs.model.herbs_model import HERBSModel, ensemble_scores, head_logits

__all__ = ["HERBSModel", "ensemble_scores", "head_logits"]
