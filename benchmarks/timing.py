"""Timing helpers shared by the benchmarks. Imports nothing of herbs: benchmarks/vs_original.py
also uses them in the process that runs the original code (whose timm herbs cannot import)."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch


def median_times(fns, steps: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, interleaved so that load from other processes hits all alike.
    Each round starts with the next function: the first after a round's last one runs with colder
    caches (measured: +25 % for the selector), and that must not always be the same one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for round_ in range(steps):
        for i in range(len(fns)):
            which = (round_ + i) % len(fns)
            start = time.perf_counter()
            fns[which]()
            times[which].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


# The original's optimizer settings (its main.py: Nesterov momentum 0.9; the recipe's weight decay).
SGD_SETTINGS = dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=3e-4)


def original_sgd(model) -> torch.optim.Optimizer:
    """The original's optimizer as its main.py builds it: torch's SGD, torch's choice of kernel."""
    return torch.optim.SGD(model.parameters(), **SGD_SETTINGS)


def step_fn(model, loss_fn, images, labels, precision: str = "fp32", make_optimizer=original_sgd):
    """One training step as a function: zero grads, forward (autocast for bf16/fp16) + loss, backward,
    optimizer step (through a grad scaler for fp16). On a GPU it waits for the step to finish."""
    optimizer = make_optimizer(model)
    device = images.device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()

    return step
