"""The global batch on any number of processes, and the peak learning rate that goes with it.

A recipe states its global batch (`train.global_batch_size`: images per optimizer step, all
processes together) and the learning rate tuned for it. On N processes herbs keeps that batch by
accumulating `global / (data.batch_size x N)` micro-batches, so one GPU with 4 accumulated
micro-batches and four GPUs with none take the same optimizer steps. Where it does not divide, or
the accumulation is fixed by hand, the global batch changes and `optim.lr_scaling` says how the
peak LR follows it (linear or square-root rule, or not at all); without a rule that is an error.

A resumed run keeps the global batch and per-process batch its checkpoint was written with, on
any number of processes: the accumulation is re-derived (2 processes x 1 -> 1 process x 2), and a
process count that no whole accumulation fits is refused, as is a config whose global batch
differs from the checkpoint's (the data plan, and so every sample's place, depends on it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from herbs.config import Config
from herbs.errors import CheckpointError, ConfigError
from herbs.train.checkpoints import TrainerState
from herbs.train.fit import misfit


@dataclass(frozen=True)
class BatchPlan:
    processes: int
    per_process: int  # data.batch_size: micro-batch of one process
    accumulation: int  # micro-batches per optimizer step
    global_batch: int  # images per optimizer step, all processes
    peak_lr: float  # optim.lr, scaled where the global batch differs from the recipe's

    def as_dict(self) -> dict:
        return asdict(self)


def plan_batch(config: Config, processes: int, written: TrainerState | None = None, checkpoint: str = "") -> BatchPlan:
    """The accumulation and peak LR for `processes` processes, or one sentence why none fits;
    resuming the checkpoint `checkpoint` whose trainer state is `written`, the batch it keeps."""
    if written is not None and written.global_batch:
        return resumed_plan(config, processes, written, checkpoint)
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


def resumed_plan(config: Config, processes: int, written: TrainerState, checkpoint: str) -> BatchPlan:
    per_process, global_batch = config.data.batch_size, written.global_batch
    if per_process != written.per_process_batch:
        raise misfit(checkpoint, "data.batch_size", written.per_process_batch, per_process,
                     f"set data.batch_size={written.per_process_batch} (a run keeps its per-process and global batch), or start a new run (another log.name)")
    recipe = plan_batch(config, written.processes)  # what this config makes of the processes that wrote it
    if recipe.global_batch != global_batch:
        raise misfit(checkpoint, "the global batch", global_batch, f"{recipe.global_batch} with this config",
                     "set train.global_batch_size (and train.gradient_accumulation_steps) back, or start a new run (another log.name)")
    micro_batches = global_batch // per_process  # per optimizer step, all processes
    if micro_batches % processes:
        fits = [n for n in range(1, micro_batches + 1) if micro_batches % n == 0]
        raise CheckpointError(
            f"checkpoint {checkpoint} was written with global batch {global_batch} ({written.processes} processes x "
            f"{per_process} x {written.accumulation} accumulated), which {processes} processes of {per_process} cannot make "
            f"with a whole accumulation; resume on one of {fits} processes"
        )
    return BatchPlan(processes, per_process, micro_batches // processes, global_batch, recipe.peak_lr)


def warmup_steps(config: Config, steps_per_epoch: int) -> int:
    """Warmup in optimizer steps: `optim.warmup_steps` when given, else `optim.warmup_epochs` epochs."""
    if config.optim.warmup_steps is not None:
        return config.optim.warmup_steps
    return round(config.optim.warmup_epochs * steps_per_epoch)
