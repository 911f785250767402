"""What a checkpoint must match to be resumed, and a guard against resuming into nowhere.

A checkpoint's data position (epoch, micro-batch) only means the same samples when the shards,
the seed, the per-process batch, the global batch and the data plan's lanes are the same (the number of
processes may change: `herbs.train.batch` re-derives the accumulation); its weights only load
into a model of the same shapes. Each checkpoint records these facts, and a resume compares them
first, so a mismatch is one sentence naming both values instead of a size-mismatch traceback, a
stream position out of range, a silently wrong data position, or a loop that never ends.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

from herbs.config import Config
from herbs.errors import CheckpointError, HerbsError

SHAPES = "model shapes"


def requirements(config: Config, manifest, model) -> dict:
    """This run's facts; `model` before `accelerator.prepare` (ZeRO-3 would hide its shapes). The
    batch facts are checked before the process group exists (`herbs.train.batch.plan_batch`)."""
    return {
        "model.num_classes": config.model.num_classes,
        "model.head": config.model.head,
        SHAPES: {name: list(tensor.shape) for name, tensor in model.state_dict().items()},
        "the shards' manifest (sha256)": hashlib.sha256(manifest.to_json().encode()).hexdigest()[:16],
        "train.seed": config.train.seed,  # orders and augments the data
        # The checkpoint holds an average or it does not; and best/ compares scores of one kind of weights.
        "EMA weights (train.ema_decay above 0)": bool(config.train.ema_decay),
        "train.select_best": config.train.select_best,
    }


def misfit(checkpoint: str, fact: str, was, now, fix: str = "resume with the same settings, or start a new run (another log.name)") -> CheckpointError:
    return CheckpointError(f"checkpoint {checkpoint} cannot be resumed by this run: {fact} was {was} when it was written "
                           f"and is {now} now; {fix}")


def check_fit(checkpoint: str, saved: dict, now: dict) -> None:
    """Raise one sentence for the first fact the checkpoint at `checkpoint` does not share with this run."""
    for key, value in now.items():
        if key not in saved or saved[key] == value:
            continue
        if key == SHAPES:
            differ = sorted(set(saved[key]) ^ set(value)) or [n for n in value if saved[key][n] != value[n]]
            name = differ[0]
            key, was, value = f"the shape of {name}", saved[key].get(name, "absent"), value.get(name, "absent")
        else:
            was = saved[key]
        raise misfit(checkpoint, key, was, value)


def progressing(batches: Iterable, epoch: int, start_batch: int) -> Iterator:
    """The epoch's batches; an epoch that yields none would make the training loop spin forever."""
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        raise HerbsError(
            f"epoch {epoch} has no batches from batch {start_batch} on, so training cannot advance; "
            "the checkpoint's data position does not fit these shards and settings"
        )
