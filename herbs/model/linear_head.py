"""The baseline HERBS is measured against: the same backbone and taps, a plain classifier on the last one.

Its tokens are averaged, normalized and classified by one linear layer, the usual timm head. It
returns `comb_outs` only, the key of HERBS's final classifier, so that the loss (its combiner
cross-entropy, loss.lambda_c), the metrics, predictions and exports take it as a one-head
ensemble with no other change.
"""

from __future__ import annotations

import torch
from torch import nn

from herbs.config import ModelConfig
from herbs.model.tapped import TappedModel


class LinearHeadModel(TappedModel):
    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__(config, load_pretrained)
        width = self.backbone.channels[-1]
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, config.num_classes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"comb_outs": self.classifier(self.norm(self.backbone(images)[-1].mean(1)))}
