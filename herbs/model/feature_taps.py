"""Any timm backbone with a feature pyramid, tapped at its last four levels.

timm's `features_only` gives each level as a [B, C, H, W] map ([B, H, W, C] for Swin V2):
ConvNets (ResNet, ConvNeXt, EfficientNet, ...) and Swin V2 their stages, plain ViTs (ViT, EVA,
DeiT) the blocks named by timm's own `out_indices` (here `model.backbone_args.out_indices`). Each map becomes a token sequence
[B, H*W, C] in row-major order, as the Swin taps are, so the pyramids, the selector and the
combiner see the same kind of input whatever the backbone.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from herbs.errors import CheckpointError, ConfigError

LEVELS = 4


def create_features(name: str, img_size: int, pretrained: bool, pretrained_file: str | None, **args) -> nn.Module:
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise CheckpointError(f"model.pretrained_file '{pretrained_file}' does not exist; pass the backbone's timm checkpoint file")
        # timm's own way to load a local file: its per-architecture key filters and the feature wrapper's renaming apply.
        pretrained, args = True, {**args, "pretrained_cfg_overlay": {"file": str(pretrained_file)}}
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, features_only=True, img_size=img_size, **args)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            # ConvNets take any input size and no img_size; transformers need it for their position embeddings.
            return timm.create_model(name, pretrained=pretrained, features_only=True, **args)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"model.backbone '{name}' is not a timm model; see timm.list_models()") from err
        if "features_only" in str(err) or "feature" in str(err).lower():
            raise ConfigError(f"model.backbone '{name}' gives no feature pyramid in timm ({err}); choose a backbone that has one") from err
        raise
    except (TypeError, ValueError, IndexError, AssertionError) as err:
        raise ConfigError(f"model.backbone_args do not fit timm's '{name}': {err}") from err


class FeatureTaps(nn.Module):
    """`forward` returns the last four feature levels of a timm model as [B, L, C] tensors."""

    def __init__(
        self,
        name: str,
        img_size: int,
        drop_path_rate: float = 0.1,
        backbone_args: dict | None = None,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.body = create_features(name, img_size, pretrained, pretrained_file, drop_path_rate=drop_path_rate, **(backbone_args or {}))
        info = self.body.feature_info
        given = len(info.out_indices)  # the levels it returns (len(info) counts every level it could)
        if given < LEVELS:
            raise ConfigError(
                f"model.backbone '{name}' gives {given} feature levels and HERBS taps {LEVELS}; choose a backbone with "
                f"{LEVELS} or more (for a ViT, name {LEVELS} blocks in model.backbone_args.out_indices, e.g. [2, 5, 8, 11])"
            )
        self.channels = info.channels()[-LEVELS:]
        strides = info.reduction()[-LEVELS:]
        if img_size % max(strides):
            raise ConfigError(f"model.img_size {img_size} is not a multiple of {max(strides)}, the coarsest stride of '{name}'; "
                              f"use a multiple of it (e.g. {max(strides) * (img_size // max(strides) + 1)})")
        self.tokens = [(img_size // stride) ** 2 for stride in strides]
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"  # timm's Swin V2 features are [B, H, W, C]
        if grad_checkpointing:
            self.body.set_grad_checkpointing(True)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        levels = self.body(images)[-LEVELS:]
        if self.channels_last:
            return [level.flatten(1, 2) for level in levels]
        return [level.flatten(2).transpose(1, 2) for level in levels]
