"""An exponential moving average of the model's weights, kept in fp32 beside the model.

Every floating-point entry of the model's state (weights and BatchNorm statistics) is averaged;
integer counters are the model's own. Registered with Accelerate's checkpointing, it is saved and
resumed with the step (`custom_checkpoint_0.pkl`). Under DDP and ZeRO-1/2 every rank holds the
whole model, so every rank keeps the same average; ZeRO-3 partitions the weights and is refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.updates = model, decay, 0
        self.shadow = {name: value.detach().float().clone() for name, value in model.state_dict().items() if value.is_floating_point()}

    def decay_now(self) -> float:
        """Warmed up: an average of the first steps' random weights is worth little."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - self.decay_now()
        state = self.model.state_dict()
        for name, average in self.shadow.items():
            average.lerp_(state[name].float(), weight)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block (to evaluate or export them), its own after."""
        state = self.model.state_dict()
        own = {name: state[name].clone() for name in self.shadow}
        for name, average in self.shadow.items():
            state[name].copy_(average)
        try:
            yield
        finally:
            for name, value in own.items():
                state[name].copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, average in self.shadow.items():
            average.copy_(state["shadow"][name])
