"""The graph combiner that turns the selected tokens into one prediction (HERBS_SPEC.md §5)."""

from __future__ import annotations

import torch
from torch import nn


class GraphCombiner(nn.Module):
    """Pool S selected tokens into J = S // 64 graph nodes, one graph convolution, classify."""

    def __init__(self, num_selected: int, fpn_size: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        nodes = num_selected // 64
        self.pool0 = nn.Linear(num_selected, nodes)
        self.conv_q = nn.Conv1d(fpn_size, fpn_size // 4, 1)
        self.conv_k = nn.Conv1d(fpn_size, fpn_size // 4, 1)
        self.adj = nn.Parameter(torch.eye(nodes) / 100 + 1 / 100)
        self.alpha = nn.Parameter(torch.zeros(1))  # weight of the input-dependent adjacency; starts off
        self.conv = nn.Conv1d(fpn_size, fpn_size, 1)
        self.norm = nn.BatchNorm1d(fpn_size)
        self.pool1 = nn.Linear(nodes, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fpn_size, num_classes)

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        h = self.pool0(selected.transpose(1, 2).contiguous())  # [B, F, S] -> [B, F, J]
        q = self.conv_q(h).mean(1)
        k = self.conv_k(h).mean(1)
        adjacency = self.adj + torch.tanh(q.unsqueeze(-1) - k.unsqueeze(1)) * self.alpha
        h = self.norm(torch.matmul(self.conv(h), adjacency))
        h = self.dropout(self.pool1(h)).flatten(1)
        return self.classifier(h)
