"""Optimizer and learning-rate schedule.

The learning rate is a pure function of the optimizer step (linear warmup, then cosine to
`min_lr`), set on the param groups before the backward pass that ends an accumulation group
(under DeepSpeed that pass takes the optimizer step): nothing to save, and a resumed run gets
exactly the rate it would have had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from herbs.config import OptimConfig


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    # torch optimizers, also under DeepSpeed (DeepSpeed's own fused ones would compile C++ ops on CPU
    # runs), on torch's fused kernels (CPU and CUDA) rather than torch's default on CPU, a loop over the
    # tensors: the same update, 0.12 s instead of 0.78 s a step for the published model on 2 cores
    # (benchmarks/optimizer_step.py).
    params = [p for p in model.parameters() if p.requires_grad]
    if config.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=config.weight_decay, fused=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=True)
    optimizer.register_load_state_dict_pre_hook(keep_kernel)
    return optimizer


def keep_kernel(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """Resume on this optimizer's kernel, not the checkpoint's. torch takes every group setting from a
    loaded state, `fused` included: a checkpoint of the per-tensor loop (herbs before it used the fused
    one) would switch the loop back on, and a grad scaler that saw a fused optimizer hands the loop a
    scale it refuses (an AssertionError at the first fp16 step)."""
    kernel = {key: optimizer.defaults[key] for key in ("fused", "foreach")}
    return {**state_dict, "param_groups": [{**group, **kernel} for group in state_dict["param_groups"]]}


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `peak_lr` over `warmup_steps`, then cosine to `min_lr` at `total_steps`."""

    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        warmup = min(self.warmup_steps, max(self.total_steps - 1, 0))
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
