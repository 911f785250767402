"""Training and evaluation loaders over a shards location (`location.py`), for one rank of `world_size`.

Every batch is built inside a loader worker and is a dict:

    image    uint8 [B, 3, crop, crop] in channels_last memory format; make it float on the device
             with `transforms.normalize` (which keeps the format)
    label    int64 [B]
    key      list of B sample keys, unique within the split (`<split>_NNNNNN`)
    skipped  int: samples of this batch that could not be used (undecodable image, label outside
             the classes, sample missing from a damaged shard), each also logged with its key.
             Training batches replace them with the next usable samples of the same worker,
             so they always hold B images; evaluation batches drop them (and can be empty).
    skipped_keys  list of those samples' keys (`<shard>#<index>` for ones missing from a shard)

Rank and world size are arguments, never read from the environment or a process group, and
the loaders do their own splitting: do NOT pass them through `accelerator.prepare`, which
would split them a second time. (`prepare` returns a `TrainStream` or `EvalStream` as it is.)

Training. The epoch's batches come from lanes (`plan.py`): a number fixed when a run starts,
so that which samples an optimizer step trains on does not depend on how many processes or
loader workers share the work. Each lane reads its own ceil(N / lanes) samples of the epoch
through a shuffle buffer, then the rest of the split from where its part ends, as needed to fill
its last batch and to replace unusable samples, cut into exactly `batches_per_lane` batches of
`batch_size`. Every rank therefore yields `len(stream)` batches per epoch, from the manifest
alone, a multiple of the accumulation. Shard order and shuffle come from `(seed, epoch, lane)`,
and a sample's augmentation from `(seed, epoch, sample key)`: batch k of an epoch does not
depend on how batches 0..k-1 were made. `stream.epoch(e, start_batch=k)` therefore yields
exactly batches k.. of the uninterrupted epoch e: each lane steps over the raw samples of its
earlier batches without decoding them, and loader worker i makes batches k + i, k + i + w, ...,
so that the loader's round-robin over its w workers continues where the interrupted one stopped.

Evaluation. The slots partition the split exactly (every sample once across all ranks, in
file order); ranks may yield different numbers of batches, so gather results once at the end
(e.g. `accelerate.utils.gather_object`) rather than per batch.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import logging
import multiprocessing
import random
import weakref
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from herbs.config import DataConfig
from herbs.errors import DataError
from herbs.data.decode import DEFAULT_MAX_PIXELS, DecodeError
from herbs.data.fetch import FetchPolicy, read_piece
from herbs.data.manifest import Manifest, load_manifest
from herbs.data.plan import EpochOrder, Lanes, Piece, default_lanes, eval_pieces, loader_workers, samples_per_lane
from herbs.data.tario import Fields
from herbs.data.transforms import EvalTransform, TrainTransform, decode_image
from herbs.data.workers import ignore_signals, worker_context

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


# Streams whose loader workers are running. Workers ignore SIGTERM (see workers.py), so they must be
# shut down (sentinel, join) before multiprocessing's own exit handler tries to terminate() them;
# atexit runs this module's handler first, as it was registered after multiprocessing's.
_OPEN: "weakref.WeakSet[_Stream]" = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    for stream in list(_OPEN):
        stream.close()
    # A loader that is still referenced (by the frames of the error the process is exiting with) does
    # not send its workers the sentinel, and they would wait for it while multiprocessing waits for them.
    # Killing them is what multiprocessing's handler means to do, with the signal they do not ignore.
    for process in multiprocessing.active_children():
        if process.daemon:
            process.kill()


class Unusable(Exception):
    """A sample that cannot go into a batch; the message says why."""


def decode_sample(key: str, fields: Optional[Fields], num_classes: int, size_hint: int, max_pixels: int) -> tuple[torch.Tensor, int]:
    if fields is None:
        raise Unusable("is missing from its shard (truncated or damaged)")
    try:
        label = int(fields["cls"])
    except (KeyError, ValueError):
        raise Unusable("has no readable .cls label") from None
    if not 0 <= label < num_classes:
        raise Unusable(f"has label {label}, outside the {num_classes} classes")
    data = next((fields[ext] for ext in IMAGE_EXTENSIONS if ext in fields), None)
    if data is None:
        raise Unusable("has no image")
    try:
        return decode_image(data, size_hint, max_pixels), label
    except DecodeError as err:
        raise Unusable(f"has an undecodable image: {err}") from None


def read_pieces(manifest: Manifest, pieces: Iterable[Piece], fetch: FetchPolicy) -> Iterator[tuple[str, Optional[Fields]]]:
    for piece in pieces:
        yield from read_piece(manifest.root, piece.shard, piece.start, piece.stop, fetch)


def shuffle_buffer(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Hold up to `size` items and emit a random one as each new one arrives, then the rest."""
    buffer: list = []
    for item in items:
        if len(buffer) < max(1, size):
            buffer.append(item)
            continue
        index = rng.randrange(len(buffer))
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class Lookahead:
    """An iterator that can look at upcoming items without consuming them."""

    def __init__(self, items: Iterator):
        self.items, self.ahead = items, deque()

    def __iter__(self):
        return self

    def __next__(self):
        return self.ahead.popleft() if self.ahead else next(self.items)

    def peek(self, index: int):
        while len(self.ahead) <= index:
            self.ahead.append(next(self.items))
        return self.ahead[index]


def worker() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def make_batch(images: list[torch.Tensor], labels: list[int], keys: list[str], skipped_keys: list[str], crop: int) -> dict:
    # channels_last: the decoder's pixel layout, so each image is one plain copy (no transpose)
    image = torch.empty(len(images), crop, crop, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    for slot, one in enumerate(images):
        image[slot].copy_(one)
    labels = torch.tensor(labels, dtype=torch.int64)
    return {"image": image, "label": labels, "key": keys, "skipped": len(skipped_keys), "skipped_keys": skipped_keys}


class _Stream:
    """What both loaders share: the manifest and split, this rank's place, the loader settings."""

    # The loader, made on the first pass and kept, with its persistent workers, for the next ones.
    _loader: Optional[DataLoader] = None
    _passes: Optional["_TrainEpoch"] = None

    def __init__(self, shards: str | Path | Manifest, split: str, *, rank: int, world_size: int, batch_size: int, num_workers: int,
                 pin_memory: bool, worker_start: str, max_pixels: int, fetch: FetchPolicy):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.fetch = fetch  # how remote shards are read: timeout, retries, checksums, cache
        self.manifest = shards if isinstance(shards, Manifest) else load_manifest(shards, fetch=fetch)
        self.split = self.manifest.split(split)
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.num_workers, self.pin_memory, self.worker_start = batch_size, num_workers, pin_memory, worker_start
        self.max_pixels = max_pixels
        self.workers = max(1, num_workers)  # loader workers; 0 means batches are made in this process

    def decode(self, key: str, fields: Optional[Fields]) -> tuple[torch.Tensor, int]:
        return decode_sample(key, fields, self.manifest.num_classes, self.transform.resize, self.max_pixels)

    def __getstate__(self) -> dict:
        # A worker gets the stream's plan, not the loader (and its workers) that hands the plan out.
        return {key: value for key, value in self.__dict__.items() if key not in ("_passes", "_loader")}

    def plan(self) -> "_Stream":
        """A copy without the loader, for the loader's dataset: no reference cycle keeps a dropped
        stream's workers alive until interpreter exit (where they would ignore terminate())."""
        return copy.copy(self)

    def close(self) -> None:
        """Stop the loader workers now; dropping the stream does the same."""
        self._passes = self._loader = None
        _OPEN.discard(self)

    def loader(self, dataset: IterableDataset) -> DataLoader:
        # A private generator: starting the loader's workers must not draw from the global torch
        # RNG (that would shift the trainer's random stream). The workers draw nothing from it.
        # Persistent workers: one set per stream for the whole run, not a new one every pass.
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
            multiprocessing_context=worker_context(self.num_workers, self.worker_start, preload=(__name__,)),
            worker_init_fn=ignore_signals,
        )


class TrainStream(_Stream):
    def __init__(
        self,
        shards: str | Path | Manifest,
        split: str,
        transform: TrainTransform,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        shuffle_buffer: int = 1000,
        pin_memory: bool = False,
        worker_start: str = "forkserver",
        accumulation: int = 1,
        lanes: Optional[int] = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fetch: FetchPolicy = FetchPolicy(),
    ):
        """`accumulation`: micro-batches per optimizer step on each process (an epoch ends on a step).
        `lanes`: the run's lanes (`plan.py`), kept from the run's first start; None for a fresh run.
        Fewer loader workers than `num_workers` are used where that many cannot share the lanes evenly."""
        lanes = lanes or default_lanes(world_size, num_workers, accumulation)
        self.layout = Lanes(lanes, world_size, accumulation, rank)  # raises for lanes that do not fit
        workers = loader_workers(num_workers, self.layout.per_rank)
        if workers != num_workers:
            log.info("%d loader workers instead of %d: %d lanes per process must be shared evenly", workers, num_workers, self.layout.per_rank)
        super().__init__(shards, split, rank=rank, world_size=world_size, batch_size=batch_size, num_workers=workers,
                         pin_memory=pin_memory, worker_start=worker_start, max_pixels=max_pixels, fetch=fetch)
        self.transform, self.seed, self.shuffle_buffer = transform, seed, shuffle_buffer
        self.samples_per_lane = samples_per_lane(self.split.num_samples, lanes)
        self.batches_per_lane = -(-self.samples_per_lane // batch_size)

    @property
    def lanes(self) -> int:
        return self.layout.lanes

    def __len__(self) -> int:
        """Batches per epoch on this rank: the same on every rank, a multiple of the accumulation."""
        return self.layout.per_rank * self.batches_per_lane

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """Batches `start_batch` .. len(self) - 1 of `epoch`. Every call returns the same loader, whose
        persistent workers read the epoch and first batch from shared memory at the start of each pass."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is not in 0..{len(self)}")
        if self._passes is None:
            self._passes = _TrainEpoch(self.plan(), worker_context(self.num_workers, self.worker_start, preload=(__name__,)))
            self._loader = self.loader(self._passes)
            _OPEN.add(self)
        self._passes.position[:] = [epoch, start_batch]
        return self._loader

    def samples(self, order: EpochOrder, epoch: int, lane: int) -> Lookahead:
        """The endless raw sample sequence of one lane in `epoch`: its own samples through the
        shuffle buffer, then the rest of the split, again and again, to top up and replace."""

        def passes():
            rng = random.Random(f"shuffle/{self.seed}/{epoch}/{lane}")
            own = order.own(lane)
            rng.shuffle(own)
            yield from shuffle_buffer(read_pieces(self.manifest, own, self.fetch), self.shuffle_buffer, rng)
            # Only a few of these are used, usually: a batch-sized buffer reads little more than those.
            while True:
                yield from shuffle_buffer(read_pieces(self.manifest, order.rest(lane), self.fetch), self.batch_size, rng)

        return Lookahead(passes())

    def replacements(self, samples: Lookahead, count: int) -> Iterator[tuple[str, tuple[torch.Tensor, int]]]:
        """The next `count` usable samples after the current batch, left in place for their own turn."""
        found, ahead = 0, 0
        while found < count:
            if ahead > self.samples_per_lane + self.split.num_samples + self.batch_size:  # looked at every sample
                raise DataError(f"no sample of split '{self.split.name}' in {self.manifest.root} can be used; run `herbs shard verify` and write the shards again")
            key, fields = samples.peek(ahead)
            ahead += 1
            try:
                yield key, self.decode(key, fields)
                found += 1
            except Unusable:
                continue

    def batches(self, epoch: int, first: int, stride: int) -> Iterator[dict]:
        """This rank's batches first, first + stride, ... of `epoch`; each lane they touch is read
        from its start, stepping over (not decoding) the raw samples of its earlier batches."""
        size, order, lanes = self.batch_size, EpochOrder(self.split, self.seed, epoch, self.lanes), {}
        for j in range(first, len(self), stride):
            lane, index = self.layout.batch(j)
            if lane not in lanes:
                lanes[lane] = self.samples(order, epoch, lane)
                for _ in range(index * size):
                    next(lanes[lane])
            samples = lanes[lane]
            raw = [next(samples) for _ in range(size)]
            decoded, skipped_keys = [], []
            for key, fields in raw:
                try:
                    decoded.append(self.decode(key, fields))
                except Unusable as why:
                    log.warning("skipping training sample %s: it %s", key, why)
                    decoded.append(None)
                    skipped_keys.append(key)
            replacements = self.replacements(samples, len(skipped_keys))
            images, labels, keys = [], [], []
            for (key, _), item in zip(raw, decoded):
                if item is None:
                    key, item = next(replacements)
                images.append(self.transform(item[0], random.Random(f"augment/{self.seed}/{epoch}/{key}")))
                labels.append(item[1])
                keys.append(key)
            yield make_batch(images, labels, keys, skipped_keys, self.transform.crop)


class _TrainEpoch(IterableDataset):
    def __init__(self, stream: TrainStream, context):
        self.stream = stream
        # (epoch, start_batch) of the coming pass: shared memory, handed to the workers when they start
        self.position = (context or multiprocessing).Array("q", 2, lock=False)

    def __len__(self) -> int:
        return len(self.stream) - self.position[1]

    def __iter__(self) -> Iterator[dict]:
        epoch, start_batch = self.position[:]
        # The loader takes batches from its workers 0, 1, ... in turn, from worker 0 at each pass.
        loader_worker, workers = worker()
        return self.stream.batches(epoch, start_batch + loader_worker, workers)


class EvalStream(_Stream):
    def __init__(
        self,
        shards: str | Path | Manifest,
        split: str,
        transform: EvalTransform,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        num_workers: int,
        pin_memory: bool = False,
        worker_start: str = "forkserver",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fetch: FetchPolicy = FetchPolicy(),
    ):
        super().__init__(shards, split, rank=rank, world_size=world_size, batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, worker_start=worker_start, max_pixels=max_pixels, fetch=fetch)
        self.transform = transform
        slots = world_size * self.workers  # one per loader worker of each rank
        self.pieces = [eval_pieces(self.split, rank * self.workers + w, slots) for w in range(self.workers)]

    def __len__(self) -> int:
        """Batches on this rank (ranks may differ by a few)."""
        return sum(-(-sum(p.stop - p.start for p in pieces) // self.batch_size) for pieces in self.pieces)

    def __iter__(self) -> Iterator[dict]:
        if self._loader is None:
            self._loader = self.loader(_EvalPass(self.plan()))
            _OPEN.add(self)
        return iter(self._loader)

    def batches(self, worker: int) -> Iterator[dict]:
        samples = read_pieces(self.manifest, self.pieces[worker], self.fetch)
        while chunk := list(itertools.islice(samples, self.batch_size)):
            images, labels, keys, skipped_keys = [], [], [], []
            for key, fields in chunk:
                try:
                    image, label = self.decode(key, fields)
                except Unusable as why:
                    log.warning("skipping evaluation sample %s: it %s", key, why)
                    skipped_keys.append(key)
                    continue
                images.append(self.transform(image))
                labels.append(label)
                keys.append(key)
            yield make_batch(images, labels, keys, skipped_keys, self.transform.crop)


class _EvalPass(IterableDataset):
    def __init__(self, stream: EvalStream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[dict]:
        return self.stream.batches(worker()[0])


def train_stream(data: DataConfig, *, crop: int, rank: int, world_size: int, seed: int, pin_memory: bool = False,
                 accumulation: int = 1, lanes: Optional[int] = None) -> TrainStream:
    """The training stream of `data.train_split` as the config describes it; `crop` is model.img_size."""
    transform = TrainTransform(data.resize, crop, data.hflip, data.blur_p, data.sharpness_p)
    return TrainStream(
        data.shards, data.train_split, transform,
        rank=rank, world_size=world_size, batch_size=data.batch_size, num_workers=data.num_workers,
        seed=seed, shuffle_buffer=data.shuffle_buffer, pin_memory=pin_memory, accumulation=accumulation, lanes=lanes,
        worker_start=data.worker_start,
        max_pixels=data.max_image_pixels, fetch=FetchPolicy.from_config(data),
    )


def eval_stream(data: DataConfig, split: str, *, crop: int, rank: int, world_size: int, pin_memory: bool = False) -> EvalStream:
    """The evaluation stream of `split` (data.val_split or data.test_split)."""
    return EvalStream(
        data.shards, split, EvalTransform(data.resize, crop),
        rank=rank, world_size=world_size, batch_size=data.eval_batch_size, num_workers=data.num_workers, pin_memory=pin_memory,
        worker_start=data.worker_start, max_pixels=data.max_image_pixels, fetch=FetchPolicy.from_config(data),
    )
