"""The two feature pyramids and the per-token classifiers (HERBS_SPEC.md §2-3).

Token mixing between taps is a 1x1 Conv1d with the TOKENS as channels, so each tap's token
count is fixed by the image size: the pyramid is built for one input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herbs.config import TAPS


def mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))


class TokenClassifier(nn.Sequential):
    """Pointwise classifier over tokens: [B, L, F] -> [B, L, K].

    The original runs it as Conv1d over features-as-channels, on transposed copies of the tokens.
    `matmul=True` computes the same layers (the same parameters) as matrix products over the
    flattened tokens instead: no transposes, and a GEMM is faster than the 1x1 convolution on CPU,
    most of all in backward. The sums then run in another order, so outputs move by ~1e-6.
    """

    def __init__(self, fpn_size: int, num_classes: int, matmul: bool = False):
        super().__init__(
            nn.Conv1d(fpn_size, fpn_size, 1),
            nn.BatchNorm1d(fpn_size),
            nn.ReLU(),
            nn.Conv1d(fpn_size, num_classes, 1),
        )
        self.matmul = matmul

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.matmul:
            return super().forward(tokens.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        hidden, norm, relu, out = self
        h = F.linear(tokens, hidden.weight.squeeze(-1), hidden.bias)
        h = relu(norm(h.flatten(0, 1))).view_as(h)  # BatchNorm1d on [B * L, F]: the same statistics as on [B, F, L]
        return F.linear(h, out.weight.squeeze(-1), out.bias)


class TopDownPyramid(nn.Module):
    """Project every tap to F features, then add each coarser level into the next finer one."""

    def __init__(self, channels: list[int], tokens: list[int], fpn_size: int):
        super().__init__()
        self.proj = nn.ModuleDict({tap: mlp(c, fpn_size) for tap, c in zip(TAPS, channels)})
        # up[layer_i] maps the tokens of tap i onto those of tap i-1.
        self.up = nn.ModuleDict({TAPS[i]: nn.Conv1d(tokens[i], tokens[i - 1], 1) for i in range(1, len(TAPS))})

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [self.proj[tap](x) for tap, x in zip(TAPS, taps)]
        for i in range(len(TAPS) - 1, 0, -1):
            feats[i - 1] = self.up[TAPS[i]](feats[i]) + feats[i - 1]
        return feats


class BottomUpPyramid(nn.Module):
    """Re-project the top-down features, then add each finer level into the next coarser one."""

    def __init__(self, tokens: list[int], fpn_size: int):
        super().__init__()
        self.proj = nn.ModuleDict({tap: mlp(fpn_size, fpn_size) for tap in TAPS})
        # down[layer_i] maps the tokens of tap i onto those of tap i+1.
        self.down = nn.ModuleDict({TAPS[i]: nn.Conv1d(tokens[i], tokens[i + 1], 1) for i in range(len(TAPS) - 1)})

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [self.proj[tap](x) for tap, x in zip(TAPS, feats)]
        for i in range(len(TAPS) - 1):
            feats[i + 1] = feats[i + 1] + self.down[TAPS[i]](feats[i])
        return feats
