"""Which samples each training batch holds, and which samples each evaluation slot reads, from
the manifest alone: every rank agrees on the epoch without opening a tar.

Training: lanes. An epoch's training samples are read by `lanes` lanes, a number fixed when a run
starts and kept by every resume of it. A lane reads ceil(N / lanes) consecutive samples of the
epoch's order (shards laid end to end in a permutation drawn from (seed, epoch), from an offset
drawn likewise, so lane contents change from epoch to epoch even with a single shard), shuffled,
then the rest of the split from where its part ends, to fill its last batch and to replace
unusable samples. Its samples are cut into batches of the per-process batch size.

The epoch's micro-batches are numbered g = step * M + m, where M = global batch / per-process
batch is the number of micro-batches in one optimizer step (all processes together) and m the
micro-batch's place in the step. Micro-batch g is batch g // lanes of lane g % lanes, with lanes
a multiple of M. Which samples an optimizer step trains on, and in which micro-batch, therefore
depends only on (lanes, M, per-process batch), never on how many processes share the M
micro-batches or how many loader workers read them: a run resumed on another number of
processes (M kept by re-deriving the accumulation) trains each remaining sample of the
interrupted epoch exactly where the uninterrupted run would have, and no sample twice.

Process `rank` of a run with `accumulation` micro-batches per step holds micro-batches m in
[rank * accumulation, (rank + 1) * accumulation) of every step, which come from lanes_per_rank =
lanes / processes lanes of its own; its j-th batch is batch j // lanes_per_rank of the
(j % lanes_per_rank)-th of them, so a loader worker count that divides lanes_per_rank gives each
lane to exactly one worker.

Evaluation: slots (one loader worker of one rank each) partition the split exactly, in file
order, so that across all slots every sample is read exactly once (a slot may get none).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from herbs.data.manifest import SplitInfo
from herbs.data.tario import ShardInfo


@dataclass(frozen=True)
class Piece:
    """Samples `start` .. `stop - 1` of one shard."""

    shard: ShardInfo
    start: int
    stop: int


class Ring:
    """A split's shards laid end to end in `order` (indices into its file order; None: file
    order), wrapping around. Positions are found by bisection, so cutting a lane's part costs
    O(log shards + pieces); the only per-shard work is numpy's, a few ms at 100,000 shards."""

    def __init__(self, split: SplitInfo, order: Optional[np.ndarray] = None):
        self.shards = split.shards
        self.order = np.arange(len(split.shards)) if order is None else order
        self.ends = np.cumsum(split.sizes[self.order])
        self.total = int(self.ends[-1])

    def cut(self, begin: int, length: int) -> Iterator[Piece]:
        """`length` consecutive samples from position `begin`."""
        position = begin % self.total
        while length > 0:
            place = int(np.searchsorted(self.ends, position, side="right"))
            shard = self.shards[int(self.order[place])]
            start = position - (int(self.ends[place]) - shard.num_samples)
            take = min(length, shard.num_samples - start)
            yield Piece(shard, start, start + take)
            length -= take
            position = (position + take) % self.total


def default_lanes(processes: int, workers: int, accumulation: int) -> int:
    """Lanes for a fresh run: per process, a multiple of both the loader workers (each gets whole
    lanes) and the accumulation (lanes are a multiple of the micro-batches per step)."""
    return processes * math.lcm(max(1, workers), accumulation)


def loader_workers(requested: int, lanes_per_rank: int) -> int:
    """The most loader workers, up to `requested`, that share a rank's lanes evenly (0 stays 0)."""
    if requested <= 0:
        return 0
    return max(w for w in range(1, min(requested, lanes_per_rank) + 1) if lanes_per_rank % w == 0)


@dataclass(frozen=True)
class Lanes:
    """The training plan's layout for one process: which lane batch its j-th micro-batch is."""

    lanes: int
    processes: int
    accumulation: int
    rank: int

    def __post_init__(self):
        per_step = self.processes * self.accumulation
        if self.lanes % per_step:
            raise ValueError(f"{self.lanes} lanes are not a multiple of the {per_step} micro-batches per optimizer step")

    @property
    def per_rank(self) -> int:
        return self.lanes // self.processes

    def batch(self, j: int) -> tuple[int, int]:
        """(lane, batch of that lane) of this process's micro-batch `j` of the epoch."""
        a = self.accumulation
        g = (j // a) * self.processes * a + self.rank * a + j % a
        return g % self.lanes, g // self.lanes


def samples_per_lane(num_samples: int, lanes: int) -> int:
    return math.ceil(num_samples / lanes)


class EpochOrder:
    """One epoch's order of a split's training samples, and each lane's part of it."""

    def __init__(self, split: SplitInfo, seed: int, epoch: int, lanes: int):
        # numpy's permutation, not random.shuffle: every loader worker of every rank orders the
        # epoch's shards, and with 10,000 shards random.shuffle took 30 ms of it, numpy 0.3 ms.
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"plan/{seed}/{epoch}".encode()).digest(), "little"))
        self.ring = Ring(split, rng.permutation(len(split.shards)))
        self.offset = int(rng.integers(self.ring.total))
        self.lanes = lanes

    def own(self, lane: int) -> list[Piece]:
        """The lane's own ceil(N / lanes) samples, starting at floor(lane * N / lanes): together the
        lanes cover every sample (overlapping by at most one) and all hold the same number."""
        total = self.ring.total
        return list(self.ring.cut(self.offset + lane * total // self.lanes, samples_per_lane(total, self.lanes)))

    def rest(self, lane: int) -> Iterator[Piece]:
        """All N samples in the epoch's order, from where the lane's own part ends (read lazily:
        a lane usually needs only a few of them)."""
        total = self.ring.total
        return self.ring.cut(self.offset + lane * total // self.lanes + samples_per_lane(total, self.lanes), total)


def eval_pieces(split: SplitInfo, slot: int, slots: int) -> list[Piece]:
    """The evaluation samples of `slot`: an exact partition of the split in file order, so that
    across all slots every sample is read exactly once (a slot may get none)."""
    total = split.num_samples
    begin, end = slot * total // slots, (slot + 1) * total // slots
    return list(Ring(split).cut(begin, end - begin))
