"""Test-only switches that make the real training loop show what it does on a bad step.

Set by environment variable, so a test drives `train.py` under any launcher unchanged:

    HERBS_FAULT_NAN=STEP:MICRO[:RANK]   make the loss of micro-batch MICRO (0-based, within the
                                        accumulation group) of optimizer step STEP (0-based) NaN,
                                        on RANK only (default 0)
    HERBS_RECORD_LR=PATH                append the learning rate of every optimizer step that the
                                        optimizer actually takes to PATH (main process, one JSON line each)
    HERBS_FAULT_EXIT=STEP[:RANK]        end RANK's process (default 0) at once with exit code 3 in optimizer
                                        step STEP (0-based), as a crash would: no cleanup, no collective
    HERBS_RECORD_KEYS=PATH              append the epoch, optimizer step and sample keys of every
                                        micro-batch trained to PATH.RANK (one JSON line each)

None is read unless set; a run without them takes no branch of this module's but a check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


@dataclass
class Faults:
    nan_at: tuple[int, int] | None = None  # (step, micro-batch) whose loss becomes NaN on this rank
    keys_file: str | None = None  # where this rank records the samples it trains on
    exit_at: int | None = None  # the optimizer step in which this rank's process crashes

    @classmethod
    def from_env(cls, optimizer: torch.optim.Optimizer, rank: int) -> "Faults":
        """Reads the switches; `optimizer` is the torch optimizer itself (DeepSpeed and Accelerate
        call its `step` only when a step is really taken)."""
        record = os.environ.get("HERBS_RECORD_LR")
        if record and rank == 0:
            def log_lr(opt, args, kwargs):
                with open(record, "a") as out:
                    out.write(json.dumps({"lr": opt.param_groups[0]["lr"]}) + "\n")
            optimizer.register_step_pre_hook(log_lr)
        keys = os.environ.get("HERBS_RECORD_KEYS")
        keys_file = f"{keys}.{rank}" if keys else None
        crash = [int(part) for part in os.environ.get("HERBS_FAULT_EXIT", "").split(":") if part]
        exit_at = crash[0] if crash and rank == (crash[1:] or [0])[0] else None
        spec = os.environ.get("HERBS_FAULT_NAN")
        if not spec:
            return cls(keys_file=keys_file, exit_at=exit_at)
        step, micro, *on_rank = (int(part) for part in spec.split(":"))
        return cls((step, micro) if rank == (on_rank[0] if on_rank else 0) else None, keys_file, exit_at)

    def record_keys(self, epoch: int, step: int, keys: list[str]) -> None:
        if self.keys_file:
            with open(self.keys_file, "a") as out:
                out.write(json.dumps({"epoch": epoch, "step": step, "keys": keys}) + "\n")

    def apply(self, loss: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        if self.exit_at == step:
            os._exit(3)
        if self.nan_at == (step, micro):
            return loss * float("nan")
        return loss
