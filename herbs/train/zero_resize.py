"""Loading a DeepSpeed ZeRO checkpoint on another number of processes.

ZeRO splits the optimizer state (SGD momentum, AdamW moments) and the fp32 master weights into
one partition per process, and ZeRO-3 the module's parameters too; DeepSpeed 0.19 refuses to load
them on another count ("Automatic adjustment of ZeRO's optimizer state partitioning with a new
world size is not currently supported"), and its universal-checkpoint converter handles Adam's
moments only (SGD's momentum is a KeyError 'exp_avg'). herbs re-cuts them here, into this
process's partitions of the new engine, reading every old partition. Nothing is written: the
checkpoint stays as it was.

    ZeRO-1/2  one flat partition of each parameter group per process, padding at the end of the
              last. The module weights come from the checkpoint's full model file (fp32 under
              herbs' torch_autocast, so the master weights are exact copies of them); each state
              tensor is laid end to end from the old partitions, cut to the group's size, re-cut.
    ZeRO-3    each parameter split on its own into ceil(numel / processes) pieces, a process's
              pieces laid end to end per sub-group (as DeepSpeed's zero_to_fp32 reads them); the
              weights and each state tensor are rebuilt parameter by parameter from the old pieces
              and cut again for the new count. Per-process random state starts afresh.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from accelerate.utils.constants import MODEL_NAME

from herbs.errors import CheckpointError

log = logging.getLogger(__name__)

ENGINE_DIR = MODEL_NAME  # where Accelerate has DeepSpeed save its engine in a checkpoint
PARTITION_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")


def load_resized(accelerator, checkpoint: Path, stage: int) -> None:
    """`accelerator.load_state(checkpoint)` for a ZeRO checkpoint written by another number of processes."""
    started = time.perf_counter()
    old = (load_zero3 if stage == 3 else load_zero12)(accelerator, checkpoint)
    log.info("re-partitioned the ZeRO optimizer state of %s from %d processes onto %d in %.1f s",
             checkpoint.name, old, accelerator.num_processes, time.perf_counter() - started)


def load_zero12(accelerator, checkpoint: Path) -> int:
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
            if partitioned(value):
                state[key] = recut(old, index, key, size, rank, mine.numel()).to(device=mine.device, dtype=mine.dtype)
            else:  # a step count: the same on every old process
                state[key] = value
    return len(old)


def load_zero3(accelerator, checkpoint: Path) -> int:
    engine = accelerator.deepspeed_engine_wrapped.engine
    optimizer = engine.optimizer
    if optimizer.swap_optimizer or optimizer.offload_param:
        raise CheckpointError(f"checkpoint {checkpoint}: herbs re-partitions ZeRO-3 state held in memory only, not offloaded "
                              "to NVMe or CPU parameters; resume on the same number of processes")
    folder = checkpoint / ENGINE_DIR
    old = partitions(folder)
    written = torch.load(folder / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    shapes = {name: shape for group in written["param_shapes"] for name, shape in group.items()}
    weights = rebuilt(shapes, [torch.cat(o["fp32_flat_groups"]) for o in old])
    states = [o["optimizer_state_dict"]["state"] for o in old]
    keys = [k for k, v in states[0][0].items() if partitioned(v)]
    moments = {key: rebuilt(shapes, [torch.cat([s[i][key] for i in sorted(s)]) for s in states]) for key in keys}
    names = {id(p): name for name, p in engine.module.named_parameters()}
    rank = dist.get_rank(group=optimizer.dp_process_group)
    for index, params in enumerate(optimizer.fp16_groups):
        def mine(full: dict) -> torch.Tensor:  # this process's pieces of the sub-group's parameters
            return torch.cat([piece(full[names[id(p)]], rank, p.partition_numel()) for p in params])
        master = optimizer.fp32_partitioned_groups_flat[index]
        master.data.copy_(mine(weights))
        optimizer.fp16_partitioned_groups_flat[index].data.copy_(master.data)
        for part, view in zip(optimizer.fp16_partitioned_groups[index],
                              optimizer.unflatten(optimizer.fp16_partitioned_groups_flat[index], optimizer.fp16_partitioned_groups[index])):
            part.data = view.data
        state = optimizer.optimizer.state[master]
        for key in keys:
            state[key] = mine(moments[key]).to(device=master.device, dtype=master.dtype)
        for key, value in states[0][index].items():
            if key not in keys:  # a step count: the same on every old process
                state[key] = value
    optimizer._load_global_state_stage3(old[0])
    engine.global_steps, engine.global_samples = written["global_steps"], written["global_samples"]
    engine.skipped_steps = written["skipped_steps"]
    return len(old)


def partitioned(value) -> bool:
    """Whether an optimizer-state value is split like the weights (momentum, moments), not a step count."""
    return torch.is_tensor(value) and value.dim() == 1 and value.numel() > 1


def rebuilt(shapes: dict, flats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each parameter's whole flat tensor from every old process's ZeRO-3 pieces, laid end to end."""
    whole, offset = {}, 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        size = math.ceil(numel / len(flats))
        whole[name] = torch.cat([flat[offset:offset + size] for flat in flats])[:numel]
        offset += size
    return whole


def piece(whole: torch.Tensor, rank: int, numel: int) -> torch.Tensor:
    """Piece `rank` of `numel` elements of a flat tensor, zero-padded past its end."""
    part = torch.zeros(numel, dtype=whole.dtype)
    cut = whole[rank * numel:(rank + 1) * numel]
    part[: cut.numel()] = cut
    return part


def recut(old: list[dict], index: int, key: str, size: int, rank: int, numel: int) -> torch.Tensor:
    """Optimizer state `key` of parameter group `index` for partition `rank` of `numel` elements: the
    old partitions laid end to end, cut to the group's `size` (their padding dropped), re-cut, and
    zero-padded where the new last partition runs past the group."""
    return piece(torch.cat([o["base_optimizer_state"]["state"][index][key] for o in old])[:size], rank, numel)


def partitions(folder: Path) -> list[dict]:
    """Every old process's `optimizer_state_dict`, in process order."""
    files = {int(m.group(1)): f for f in folder.iterdir() if (m := PARTITION_FILE.fullmatch(f.name))}
    if not files or sorted(files) != list(range(len(files))):
        raise CheckpointError(f"{folder} does not hold one ZeRO optimizer partition per process (found {sorted(files)}); "
                              "resume from another checkpoint")
    return [torch.load(files[rank], map_location="cpu", weights_only=False)["optimizer_state_dict"] for rank in sorted(files)]
