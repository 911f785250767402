"""The global batch on any number of processes, and the peak learning rate that goes with it.

A recipe states its global batch (`train.global_batch_size`: images per optimizer step, all
processes together) and the learning rate tuned for it. On N processes herbs keeps that batch by
accumulating `global / (data.batch_size x N)` micro-batches, so one GPU with 4 accumulated
micro-batches and four GPUs with none take the same optimizer steps. Where it does not divide, or
the accumulation is fixed by hand, the global batch changes and `optim.lr_scaling` says how the
peak LR follows it (linear or square-root rule, or not at all); without a rule that is an error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from herbs.config import Config
from herbs.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    processes: int
    per_process: int  # data.batch_size: micro-batch of one process
    accumulation: int  # micro-batches per optimizer step
    global_batch: int  # images per optimizer step, all processes
    peak_lr: float  # optim.lr, scaled where the global batch differs from the recipe's

    def as_dict(self) -> dict:
        return asdict(self)


def plan_batch(config: Config, processes: int) -> BatchPlan:
    """The accumulation and peak LR for `processes` processes, or one sentence why none fits."""
    t, o = config.train, config.optim
    per_step = config.data.batch_size * processes  # images of one micro-batch on every process
    target = t.global_batch_size
    if t.gradient_accumulation_steps is not None:
        accumulation = t.gradient_accumulation_steps
    elif target % per_step == 0:
        accumulation = target // per_step
    elif o.lr_scaling == "none":
        fits = [b for b in range(config.data.batch_size, 0, -1) if target % (b * processes) == 0]
        hint = f"data.batch_size={fits[0]}" if fits else f"a train.global_batch_size that is a multiple of {processes}"
        raise ConfigError(
            f"train.global_batch_size {target} cannot be made of data.batch_size {config.data.batch_size} on "
            f"{processes} processes ({per_step} images per micro-batch step); use {hint}, or set "
            "optim.lr_scaling=linear (or sqrt) to let the global batch change and the learning rate follow it"
        )
    else:
        accumulation = max(1, round(target / per_step))
    global_batch = per_step * accumulation
    ratio = 1.0 if target is None else global_batch / target
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[o.lr_scaling]
    return BatchPlan(processes, config.data.batch_size, accumulation, global_batch, o.lr * factor)


def warmup_steps(config: Config, steps_per_epoch: int) -> int:
    """Warmup in optimizer steps: `optim.warmup_steps` when given, else `optim.warmup_epochs` epochs."""
    if config.optim.warmup_steps is not None:
        return config.optim.warmup_steps
    return round(config.optim.warmup_epochs * steps_per_epoch)
