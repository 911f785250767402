"""What every head here stands on: the backbone's four taps, and BatchNorm kept frozen when asked."""

from __future__ import annotations

from torch import nn

from herbs.config import ModelConfig, is_swin, token_counts
from herbs.model.backbone import SwinTaps
from herbs.model.feature_taps import FeatureTaps


class TappedModel(nn.Module):
    """`self.backbone` gives four [B, L, C] taps; `self.tokens` holds their L, `self.backbone.channels` their C."""

    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        """`load_pretrained=False` skips backbone weights, for models whose weights come from a checkpoint."""
        super().__init__()
        self.config = config
        common = dict(
            img_size=config.img_size,
            drop_path_rate=config.drop_path_rate,
            backbone_args=config.backbone_args,
            pretrained=config.pretrained and load_pretrained,
            pretrained_file=config.pretrained_file if load_pretrained else None,
            grad_checkpointing=config.grad_checkpointing,
        )
        if is_swin(config.backbone):
            self.backbone = SwinTaps(config.backbone, fused_attention=config.fused_attention, **common)
            self.tokens = token_counts(config)
        else:
            self.backbone = FeatureTaps(config.backbone, **common)
            self.tokens = self.backbone.tokens

    def train(self, mode: bool = True) -> "TappedModel":
        super().train(mode)
        if mode and self.config.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
