"""The Swin Transformer backbone, tapped where HERBS reads it (HERBS_SPEC.md §1).

timm >= 0.9 puts each patch merging at the START of stages 1..3, so the taps are the outputs
of `layers[1..3].downsample` plus the output of the last stage. The final norm and the
classifier head are not used and not kept.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models.swin_transformer import SwinTransformer, WindowAttention, checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from herbs.errors import ConfigError
from herbs.model.state_dict import load_matching, read_weights, unwrap_state_dict

UNUSED_PREFIXES = ("head.", "norm.")


class SwinTaps(nn.Module):
    """Swin patch embedding and stages; `forward` returns the four taps as [B, L, C] tensors."""

    def __init__(
        self,
        name: str,
        img_size: int,
        drop_path_rate: float = 0.1,
        backbone_args: dict | None = None,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        grad_checkpointing: bool = False,
        fused_attention: bool = False,
    ):
        super().__init__()
        args = dict(backbone_args or {})
        for legacy, fixed in (("ape", False), ("patch_norm", True)):
            # timm 0.4.12 arguments that timm >= 1.0 rejects; only their fixed value is supported.
            if legacy in args and args.pop(legacy) != fixed:
                raise ConfigError(f"model.backbone_args.{legacy} must be {fixed} (the only Swin variant timm >= 1.0 builds)")
        try:
            swin = timm.create_model(
                name,
                pretrained=pretrained and pretrained_file is None,
                img_size=img_size,
                drop_path_rate=drop_path_rate,
                num_classes=0,
                **args,
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError(f"model.backbone '{name}' is not a timm model; use a Swin name such as swin_tiny_patch4_window7_224") from err
            raise
        except TypeError as err:
            raise ConfigError(f"model.backbone_args has an argument timm's Swin does not take: {err}") from err
        if not isinstance(swin, SwinTransformer):
            raise ConfigError(f"model.backbone '{name}' is a {type(swin).__name__}, not a Swin Transformer; HERBS taps Swin stages")
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        for module in self.layers.modules():
            if isinstance(module, WindowAttention):  # timm's own switch, read on every forward
                module.fused_attn = fused_attention
        self.grad_checkpointing = grad_checkpointing
        if pretrained_file is not None:
            self.load_backbone_file(pretrained_file, swin)

    @property
    def channels(self) -> list[int]:
        dims = [stage.blocks[0].norm1.normalized_shape[0] for stage in self.layers]  # width after each merging
        return [dims[1], dims[2], dims[3], dims[3]]

    def load_backbone_file(self, path: str | Path, swin: SwinTransformer) -> None:
        """Backbone weights from a local file, in timm's layout or the original Swin/timm 0.4.12 one."""
        state = unwrap_state_dict(read_weights(path))
        if any(k.startswith("backbone.") for k in state):  # a whole HERBS checkpoint: take its backbone
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        state = checkpoint_filter_fn(state, swin)
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
        load_matching(self, state, f"backbone weights '{path}'")

    def _blocks(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage.blocks, x, use_reentrant=False)
        return stage.blocks(x)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self._blocks(self.layers[0], self.patch_embed(images))
        taps = []
        for stage in self.layers[1:]:
            x = stage.downsample(x)
            taps.append(x.flatten(1, 2))  # NHWC -> [B, H*W, C], row-major
            x = self._blocks(stage, x)
        taps.append(x.flatten(1, 2))
        return taps
