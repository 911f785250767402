"""Optimizer and learning-rate schedule.

The learning rate is a pure function of the optimizer step (linear warmup, then cosine to
`min_lr`), set on the param groups before every step: nothing to save, and a resumed run
gets exactly the rate it would have had.
"""

from __future__ import annotations

import math

import torch

from herbs.config import OptimConfig


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    # torch optimizers, also under DeepSpeed: its fused ones would compile C++ ops on CPU runs.
    params = [p for p in model.parameters() if p.requires_grad]
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total_steps`."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
