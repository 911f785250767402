"""The optimizer herbs trains with: torch's fused kernels, updating exactly as the published SGD and AdamW."""

from __future__ import annotations

import pytest
import torch

from herbs.config import OptimConfig
from herbs.train.optim import build_optimizer


def reference(name: str, params, config: OptimConfig) -> torch.optim.Optimizer:
    """The per-tensor loop of torch's SGD / AdamW, as the original's main.py builds them."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, foreach=False)
    return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, foreach=False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_step_updates_as_the_reference_loop(name):
    torch.manual_seed(0)
    config = OptimConfig(name=name, lr=0.05, weight_decay=3e-4)
    ours, theirs = torch.nn.Linear(33, 17), torch.nn.Linear(33, 17)  # odd sizes: the kernels' vector tails
    theirs.load_state_dict(ours.state_dict())
    fused, loop = build_optimizer(ours, config), reference(name, theirs.parameters(), config)
    # Its own kernel is why herbs' step is cheaper: at the published widths (140 M parameters) one SGD
    # step is 0.065 s fused against 0.28 s per tensor on a 2-core CPU (benchmarks/vs_original.py).
    assert all(group["fused"] for group in fused.param_groups)
    for _ in range(5):
        x = torch.randn(8, 33)
        for model, optimizer in ((ours, fused), (theirs, loop)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
