"""The model that `model.head` names."""

from __future__ import annotations

from herbs.config import ModelConfig
from herbs.model.herbs_model import HERBSModel
from herbs.model.linear_head import LinearHeadModel
from herbs.model.tapped import TappedModel

HEAD_MODELS = {"herbs": HERBSModel, "linear": LinearHeadModel}


def build_model(config: ModelConfig, load_pretrained: bool = True) -> TappedModel:
    """`load_pretrained=False` skips backbone weights, for models whose weights come from a checkpoint."""
    return HEAD_MODELS[config.head](config, load_pretrained)
