"""BatchNorm running statistics of a skipped optimizer step, put back as they were.

A forward pass updates the running statistics before anyone knows whether its loss is finite.
When a step is skipped for a non-finite loss its parameters stay as they were, and so must the
statistics: a NaN that reached them would poison every later evaluation, and a skipped group
should leave the model exactly as if it had never been seen.
"""

from __future__ import annotations

import torch
from torch import nn


class NormStatistics:
    def __init__(self, model: nn.Module):
        self.buffers = [buffer for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        for buffer in module.buffers(recurse=False)]
        self.saved: list[torch.Tensor] = []

    def snapshot(self) -> None:
        """At the start of an accumulation group."""
        self.saved = [buffer.clone() for buffer in self.buffers]

    def restore(self) -> None:
        """After the group's step was skipped."""
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, self.saved):
                buffer.copy_(saved)
