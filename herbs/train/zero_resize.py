"""Loading a DeepSpeed ZeRO-1/2 checkpoint on another number of processes.

ZeRO-1/2 split the optimizer state (SGD momentum, AdamW moments) and the fp32 master weights of
each parameter group into one flat partition per process; DeepSpeed 0.19 refuses to load them on
another count ("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size
is not currently supported"), and its universal-checkpoint converter handles Adam's moments only
(SGD's momentum is a KeyError 'exp_avg'). herbs does it here, as DeepSpeed's own elastic loader
would: the module weights come from the checkpoint's full model file (fp32 under herbs'
torch_autocast, so the master weights are exact copies of them), and each optimizer-state tensor
is laid end to end from every old partition, cut to the group's true size and re-cut into this
process's partition of the new engine. Nothing is written: the checkpoint stays as it was.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from herbs.errors import CheckpointError

log = logging.getLogger(__name__)

ENGINE_DIR = "pytorch_model"  # where Accelerate has DeepSpeed save its engine in a checkpoint
PARTITION_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")


def load_resized(accelerator, checkpoint: Path) -> None:
    """`accelerator.load_state(checkpoint)` for a ZeRO-1/2 checkpoint written by another number of processes."""
    started = time.perf_counter()
    accelerator.load_state(str(checkpoint), load_optimizer_states=False)  # module weights, counters, RNG, scaler
    optimizer = accelerator.deepspeed_engine_wrapped.engine.optimizer
    if getattr(optimizer, "round_robin_gradients", False):
        raise CheckpointError(f"checkpoint {checkpoint}: zero_optimization.round_robin_gradients orders the partitions by "
                              "process count, so it cannot be resumed on another; switch it off or resume on the same count")
    old = partitions(checkpoint / ENGINE_DIR)
    if any(any(padding) for padding in old[0].get("param_alignment_paddings", [])):
        raise CheckpointError(f"checkpoint {checkpoint} was written with zero_optimization.parameter_alignment padding, "
                              "which herbs cannot re-partition; resume on the same number of processes")
    optimizer._load_global_state(old[0])  # loss scale and clipping, the same on every old process
    for index, group in enumerate(optimizer.optimizer.param_groups):
        mine = group["params"][0]  # this process's flat fp32 partition of the group
        size = sum(p.numel() for p in optimizer.bit16_groups[index])  # the group without alignment padding
        rank = dist.get_rank(group=optimizer.real_dp_process_group[index])
        state = optimizer.optimizer.state[mine]
        for key, value in old[0]["base_optimizer_state"]["state"][index].items():
            if torch.is_tensor(value) and value.dim() == 1 and value.numel() > 1:  # partitioned like the weights
                state[key] = recut(old, index, key, size, rank, mine.numel()).to(device=mine.device, dtype=mine.dtype)
            else:  # a step count: the same on every old process
                state[key] = value
    log.info("re-partitioned the ZeRO optimizer state of %s from %d processes onto %d in %.1f s",
             checkpoint.name, len(old), accelerator.num_processes, time.perf_counter() - started)


def recut(old: list[dict], index: int, key: str, size: int, rank: int, numel: int) -> torch.Tensor:
    """Optimizer state `key` of parameter group `index` for partition `rank` of `numel` elements: the
    old partitions laid end to end, cut to the group's `size` (their padding dropped), re-cut, and
    zero-padded where the new last partition runs past the group."""
    whole = torch.cat([o["base_optimizer_state"]["state"][index][key] for o in old])[:size]
    part = torch.zeros(numel, dtype=whole.dtype)
    piece = whole[rank * numel:(rank + 1) * numel]
    part[: piece.numel()] = piece
    return part


def partitions(folder: Path) -> list[dict]:
    """Every old process's `optimizer_state_dict`, in process order."""
    files = {int(m.group(1)): f for f in folder.iterdir() if (m := PARTITION_FILE.fullmatch(f.name))}
    if not files or sorted(files) != list(range(len(files))):
        raise CheckpointError(f"{folder} does not hold one ZeRO optimizer partition per process (found {sorted(files)}); "
                              "resume from another checkpoint")
    return [torch.load(files[rank], map_location="cpu", weights_only=False)["optimizer_state_dict"] for rank in sorted(files)]
