"""Which samples each loader slot (one worker of one rank) reads in an epoch, computed from
the manifest alone: every rank agrees on the epoch length without opening a tar.

Slots are numbered `rank * workers + worker`. Ranges are cut from the split's samples by
index, not by shard, so any number of shards feeds any number of slots: with fewer shards
than slots, several slots read different parts of the same shard.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

from herbs.data.manifest import SplitInfo
from herbs.data.tario import ShardInfo


@dataclass(frozen=True)
class Piece:
    """Samples `start` .. `stop - 1` of one shard."""

    shard: ShardInfo
    start: int
    stop: int


def cut(shards: list[ShardInfo], begin: int, length: int) -> list[Piece]:
    """`length` consecutive samples from `begin` of the shards laid end to end, wrapping around."""
    starts = list(itertools.accumulate((s.num_samples for s in shards), initial=0))
    total = starts.pop()
    pieces = []
    position = begin % total
    while length > 0:
        index = bisect.bisect_right(starts, position) - 1
        start = position - starts[index]
        take = min(length, shards[index].num_samples - start)
        pieces.append(Piece(shards[index], start, start + take))
        length -= take
        position = (position + take) % total
    return pieces


def train_samples_per_slot(num_samples: int, slots: int) -> int:
    return math.ceil(num_samples / slots)


def train_pieces(split: SplitInfo, seed: int, epoch: int, slot: int, slots: int) -> tuple[list[Piece], list[Piece]]:
    """The training samples of `slot` in `epoch`, and the rest of the split after them.

    The slot's own part is ceil(N / slots) consecutive samples of the epoch's order, starting
    at floor(slot * N / slots), so that the slots together cover every sample (overlapping by
    at most one) and all hold the same number. The epoch's order lays the shards end to end in
    a permutation drawn from (seed, epoch) and starts at an offset drawn likewise, so slot
    contents change from epoch to epoch even with a single shard. The rest (all N samples in
    the epoch's order, from where the slot's part ends) tops up the slot's last batches and
    replaces unusable samples, so even a slot whose own samples are all unreadable has data.
    """
    total = split.num_samples
    rng = random.Random(f"plan/{seed}/{epoch}")
    shards = list(split.shards)
    rng.shuffle(shards)
    begin = rng.randrange(total) + slot * total // slots
    length = train_samples_per_slot(total, slots)
    return cut(shards, begin, length), cut(shards, begin + length, total)


def eval_pieces(split: SplitInfo, slot: int, slots: int) -> list[Piece]:
    """The evaluation samples of `slot`: an exact partition of the split in file order, so that
    across all slots every sample is read exactly once (a slot may get none)."""
    total = split.num_samples
    begin, end = slot * total // slots, (slot + 1) * total // slots
    return cut(list(split.shards), begin, end - begin)
