"""Streaming loaders over real shards, with ranks simulated in-process (rank=0/1 of world_size=2,
each with real DataLoader worker processes): epoch lengths, coverage, determinism, resume,
evaluation coverage, bad samples, and the WebDataset pitfalls the issue lists."""

from __future__ import annotations

import logging
import random
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers.data import bomb_png, rewrite_shard, write_tiny_shards
from herbs.config import DataConfig
from herbs.errors import DataError, exit_code
from herbs.data.manifest import load_manifest
from herbs.data.stream import EvalStream, TrainStream, eval_stream, train_stream
from herbs.data.transforms import EvalTransform, TrainTransform, decode_image

TRAIN = TrainTransform(resize=36, crop=32)
EVAL = EvalTransform(resize=36, crop=32)
TRAIN_KEYS = {f"train_{i:06d}" for i in range(40)}  # tiny_dataset: 4 classes x 10 train, x 5 test
TEST_KEYS = {f"test_{i:06d}" for i in range(20)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 train samples in 4 shards of <= 12 (and 20 test samples in 2)."""
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), shard_samples=12)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    """The same samples in one shard per split: fewer shards than ranks x workers."""
    return write_tiny_shards(tmp_path_factory.mktemp("one_shard"), shard_samples=1000)


def train(shards, rank=0, world_size=2, workers=2, batch_size=4, seed=0, **kw):
    return TrainStream(shards, "train", TRAIN, rank=rank, world_size=world_size, batch_size=batch_size, num_workers=workers, seed=seed, **kw)


def run(stream, epoch=0, start_batch=0):
    return list(stream.epoch(epoch, start_batch))


def keys(batches):
    return [k for b in batches for k in b["key"]]


def same(a, b):
    return len(a) == len(b) and all(x["key"] == y["key"] and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))


@pytest.mark.parametrize("layout", ["shards", "one_shard"])
@pytest.mark.parametrize("world_size, workers, batch_size", [(2, 2, 4), (3, 2, 3), (2, 0, 5)])
def test_every_rank_runs_the_same_number_of_full_batches_and_an_epoch_covers_every_sample(request, layout, world_size, workers, batch_size):
    shards = request.getfixturevalue(layout)
    seen = []
    lengths = set()
    for rank in range(world_size):
        stream = train(shards, rank, world_size, workers, batch_size)
        batches = run(stream)
        lengths.add(len(stream))
        assert len(batches) == len(stream)  # no with_epoch-style per-worker miscount
        for batch in batches:
            assert batch["image"].shape == (batch_size, 3, 32, 32) and batch["image"].dtype == torch.uint8
            assert batch["label"].dtype == torch.int64 and batch["label"].shape == (batch_size,)
            assert len(batch["key"]) == batch_size and batch["skipped"] == 0
        seen += keys(batches)
    assert len(lengths) == 1
    assert set(seen) == TRAIN_KEYS
    # Samples are repeated only to fill every slot's last batch: at most one batch's worth per slot.
    assert len(seen) - 40 < world_size * max(1, workers) * batch_size


def test_epoch_length_comes_from_the_manifest_alone(tmp_path):
    shards = write_tiny_shards(tmp_path / "s", shard_samples=12)
    manifest = load_manifest(shards)
    for tar in shards.glob("*.tar"):
        tar.unlink()  # nothing left to list or open
    assert [len(train(manifest, rank, 2, 2, 4)) for rank in (0, 1)] == [6, 6]  # ceil(ceil(40 / 4) / 4) x 2 workers
    assert len(train(manifest, 0, 1, 0, 8)) == 5


def test_same_seed_same_batches_next_epoch_other_order(shards):
    stream = train(shards, rank=1)
    first = run(stream, epoch=0)
    assert same(first, run(train(shards, rank=1), epoch=0))
    second = run(stream, epoch=1)
    assert keys(first) != keys(second)
    assert sorted(set(keys(first)) | set(keys(run(train(shards, rank=0), epoch=0)))) == sorted(TRAIN_KEYS)
    assert keys(run(train(shards, rank=1, seed=1), epoch=0)) != keys(first)


def test_order_does_not_depend_on_or_change_global_random_state(shards):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    a = run(train(shards, workers=0))
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    assert same(a, run(train(shards, workers=0)))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_at_any_batch_gives_the_rest_of_the_epoch_bitwise(shards, workers):
    stream = train(shards, rank=1, workers=workers, batch_size=3)
    full = run(stream, epoch=2)
    assert len(full) == len(stream)
    for start in sorted({1, 2, workers + 1, len(stream) - 1, len(stream)}):
        assert same(run(stream, epoch=2, start_batch=start), full[start:]), start


def test_rank_and_world_size_come_from_the_arguments_only(shards, tmp_path, monkeypatch):
    """webdataset's own splitters read RANK/WORLD_SIZE or an initialised process group; ours must not."""
    expected = {rank: keys(run(train(shards, rank=rank))) for rank in (0, 1)}
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for rank in (0, 1):
            assert keys(run(train(shards, rank=rank))) == expected[rank]
        assert Counter(keys(EvalStream(shards, "test", EVAL, rank=1, world_size=2, batch_size=4, num_workers=2))) == \
            Counter(keys(EvalStream(shards, "test", EVAL, rank=1, world_size=2, batch_size=4, num_workers=0)))
    finally:
        dist.destroy_process_group()


def test_accelerate_prepare_leaves_the_streams_alone(shards):
    """`accelerator.prepare` re-shards DataLoaders it is given; the streams are not DataLoaders,
    so a trainer that passes them through prepare by mistake still splits the data once."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        stream = train(shards)
        evaluation = EvalStream(shards, "test", EVAL, rank=0, world_size=2, batch_size=4, num_workers=0)
        assert Accelerator(cpu=True).prepare(stream, evaluation) == (stream, evaluation)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("layout", ["shards", "one_shard"])
@pytest.mark.parametrize("world_size, workers", [(2, 2), (3, 2), (2, 0)])
def test_evaluation_sees_every_sample_exactly_once_across_ranks(request, layout, world_size, workers):
    shards = request.getfixturevalue(layout)
    seen = Counter()
    for rank in range(world_size):
        stream = EvalStream(shards, "test", EVAL, rank=rank, world_size=world_size, batch_size=3, num_workers=workers)
        batches = list(stream)
        assert len(batches) == len(stream)
        seen.update(keys(batches))
    assert seen == Counter(TEST_KEYS)


def test_eval_batches_hold_the_eval_transform_of_each_sample(shards):
    raw = {}
    for tar_path in sorted(shards.glob("test-*.tar")):
        with tarfile.open(tar_path) as tar:
            raw.update({m.name.split(".")[0]: tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")})
    batch = next(iter(EvalStream(shards, "test", EVAL, rank=0, world_size=1, batch_size=5, num_workers=0)))
    for key, image in zip(batch["key"], batch["image"]):
        assert torch.equal(image, EVAL(decode_image(raw[key])))


@pytest.fixture
def damaged(tmp_path):
    """Shards with an undecodable JPEG, a label outside the 4 classes and a sample without image."""
    shards = write_tiny_shards(tmp_path / "damaged", shard_samples=12)
    bad = {"train_000005": {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg"}, "train_000006": {"cls": b"99"}, "train_000007": {"jpg": None}}
    rewrite_shard(shards, "train-000000.tar", bad)
    rewrite_shard(shards, "test-000001.tar", {"test_000013": {"jpg": b"garbage"}, "test_000014": {"cls": b"-1"}})
    return shards, set(bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_counted_and_replaced_in_training(damaged, workers):
    shards, bad = damaged
    seen, skipped, skipped_keys = [], 0, set()
    for rank in (0, 1):
        stream = train(shards, rank=rank, workers=workers)
        batches = run(stream)
        assert len(batches) == len(stream)
        assert all(b["image"].shape[0] == 4 for b in batches)
        seen += keys(batches)
        skipped += sum(b["skipped"] for b in batches)
        skipped_keys |= {k for b in batches for k in b["skipped_keys"]}
        assert same(run(stream, start_batch=3), batches[3:])  # resume stays exact with replacements
    assert skipped_keys == bad
    assert not bad & set(seen)
    assert set(seen) == TRAIN_KEYS - bad
    assert skipped >= len(bad)  # a slot may meet a bad sample again when it repeats samples


def test_an_error_from_a_loader_worker_is_its_sentence_alone(capsys):
    """torch re-raises a worker's error with the worker's traceback in its message (ExceptionWrapper, as its workers
    send them): the user sees the sentence alone. A real worker is not used here: one left failed keeps pytest from exiting
    when another loader started the forkserver first (see the note of 2026-12-07)."""
    from torch.utils.data._utils import ExceptionWrapper

    try:
        raise DataError("no sample of split 'train' in shards can be used; write the shards again")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    assert exit_code("herbs train", wrapped.reraise) == 2
    assert capsys.readouterr().err == "herbs train: error: no sample of split 'train' in shards can be used; write the shards again\n"


def test_bad_samples_are_logged_with_their_key(damaged, caplog):
    shards, bad = damaged
    with caplog.at_level(logging.WARNING, logger="herbs.data.stream"):
        run(train(shards, rank=0, world_size=1, workers=0))
    logged = " ".join(caplog.messages)
    assert all(key in logged for key in bad)
    assert "outside the 4 classes" in logged and "undecodable image" in logged and "has no image" in logged


def test_bad_samples_are_skipped_and_counted_in_evaluation(damaged):
    shards, _ = damaged
    seen, skipped, skipped_keys = Counter(), 0, []
    for rank in (0, 1):
        for batch in EvalStream(shards, "test", EVAL, rank=rank, world_size=2, batch_size=4, num_workers=2):
            seen.update(batch["key"])
            skipped += batch["skipped"]
            skipped_keys += batch["skipped_keys"]
            assert batch["image"].shape[0] == len(batch["key"]) == batch["label"].shape[0]
    assert skipped == 2 and sorted(skipped_keys) == ["test_000013", "test_000014"]
    assert seen == Counter(TEST_KEYS - {"test_000013", "test_000014"})


def test_a_decompression_bomb_in_a_shard_is_skipped_and_named(tmp_path, caplog):
    shards = write_tiny_shards(tmp_path / "s", shard_samples=12)
    rewrite_shard(shards, "train-000000.tar", {"train_000003": {"jpg": None, "png": bomb_png()}})
    rewrite_shard(shards, "test-000000.tar", {"test_000002": {"jpg": None, "png": bomb_png()}})
    with caplog.at_level(logging.WARNING, logger="herbs.data.stream"):
        batches = run(train(shards, world_size=1, workers=0))
        evaluated = list(EvalStream(shards, "test", EVAL, rank=0, world_size=1, batch_size=4, num_workers=0))
    assert "train_000003" not in keys(batches) and all(b["image"].shape[0] == 4 for b in batches)
    assert [k for b in evaluated for k in b["skipped_keys"]] == ["test_000002"] and len(keys(evaluated)) == 19
    assert ("skipping evaluation sample test_000002: it has an undecodable image: a 20000x20000 PNG of 400,000,000 pixels, "
            "over the limit of 178,956,970 (data.max_image_pixels, or --max-image-pixels)") in caplog.messages
    # data.max_image_pixels sets the limit: the 40x30 photos themselves are over 1000.
    data = DataConfig(shards=str(shards), eval_batch_size=8, num_workers=0, resize=36, max_image_pixels=1000)
    assert sum(b["skipped"] for b in eval_stream(data, "test", crop=32, rank=0, world_size=1)) == 20


def test_a_truncated_shard_loses_only_its_tail(tmp_path, caplog):
    shards = write_tiny_shards(tmp_path / "s", shard_samples=12)
    with tarfile.open(shards / "train-000001.tar") as tar:
        in_shard = {m.name.split(".")[0] for m in tar}
    rewrite_shard(shards, "train-000001.tar", {}, truncate_to=10_000)
    rewrite_shard(shards, "test-000000.tar", {}, truncate_to=10_000)
    lengths, seen = set(), set()
    for rank in (0, 1):
        stream = train(shards, rank=rank)
        batches = run(stream)
        lengths.add(len(batches))
        assert len(batches) == len(stream) and all(b["image"].shape[0] == 4 for b in batches)
        seen |= set(keys(batches))
    assert len(lengths) == 1
    lost = TRAIN_KEYS - seen
    assert lost < in_shard and len(lost) >= 9  # 10 kB keep the first two or three of its 12 samples
    evaluated, skipped = set(), 0
    for rank in (0, 1):
        with caplog.at_level(logging.WARNING, logger="herbs.data.stream"):
            for batch in EvalStream(shards, "test", EVAL, rank=rank, world_size=2, batch_size=4, num_workers=rank * 2):
                evaluated |= set(batch["key"])
                skipped += batch["skipped"]
    assert skipped > 0 and len(evaluated) + skipped == 20
    assert any(m.startswith("skipping evaluation sample test-000000.tar#") and m.endswith(": it is missing from its shard (truncated or damaged)")
               for m in caplog.messages)


def test_slots_whose_own_samples_are_all_lost_borrow_from_the_rest(tmp_path):
    shards = write_tiny_shards(tmp_path / "s", shard_samples=12)  # train shards of 12, 12, 12, 4
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar"):
        rewrite_shard(shards, name, {}, truncate_to=1000)  # nothing left but a cut-off first header
    with tarfile.open(shards / "train-000003.tar") as tar:
        survivors = {m.name.split(".")[0] for m in tar}
    seen, skipped = set(), 0
    for rank in (0, 1):  # 4 slots of 10 samples, at most 4 of them readable: some slots have none
        stream = train(shards, rank=rank)
        batches = run(stream, epoch=1)
        assert len(batches) == len(stream) and all(b["image"].shape[0] == 4 for b in batches)
        assert same(run(stream, epoch=1, start_batch=2), batches[2:])
        seen |= set(keys(batches))
        skipped += sum(b["skipped"] for b in batches)
    assert seen == survivors and skipped >= 36


def test_a_split_with_no_usable_sample_is_one_error(tmp_path):
    shards = write_tiny_shards(tmp_path / "s", num_classes=2, train=2, test=1, shard_samples=100)
    rewrite_shard(shards, "train-000000.tar", {f"train_{i:06d}": {"cls": b"7"} for i in range(4)})
    with pytest.raises(DataError, match="no sample of split 'train'"):
        run(train(shards, world_size=1, workers=0))


def test_config_factories(shards):
    data = DataConfig(shards=str(shards), batch_size=4, eval_batch_size=6, num_workers=0, resize=36)
    stream = train_stream(data, crop=32, rank=0, world_size=1, seed=0)
    assert stream.transform == TRAIN and len(stream) == 10
    evaluation = eval_stream(data, "test", crop=32, rank=0, world_size=1)
    assert evaluation.transform == EVAL and len(evaluation) == 4
    with pytest.raises(DataError, match="split 'val'"):
        eval_stream(data, data.val_split, crop=32, rank=0, world_size=1)


@pytest.mark.parametrize("round_to", [3, 4])
def test_epochs_end_on_an_optimizer_step(shards, round_to):
    streams = [train(shards, rank, 2, 2, 4, accumulation=round_to) for rank in (0, 1)]
    assert len(streams[0]) == len(streams[1]) and len(streams[0]) % round_to == 0 and len(streams[0]) >= 6
    seen = []
    for stream in streams:
        batches = run(stream)
        assert len(batches) == len(stream)
        assert same(run(stream, start_batch=len(stream) - 2), batches[-2:])
        seen += keys(batches)
    assert set(seen) == TRAIN_KEYS


def test_workers_start_from_a_forkserver_and_the_start_method_does_not_change_the_data(shards):
    """Workers forked from a training process that runs communication threads can hang on a lock one
    of those threads held; they start from a single-threaded forkserver instead, with the same batches."""
    default, forked = train(shards, world_size=1), train(shards, world_size=1, worker_start="fork")
    assert default.epoch(0).multiprocessing_context.get_start_method() == "forkserver"
    assert forked.epoch(0).multiprocessing_context.get_start_method() == "fork"
    assert same(run(default, epoch=1), run(forked, epoch=1))


def micro_batches(streams, epoch=0, start_step=0):
    """The epoch's micro-batches in step order (m = rank x accumulation + j), from `start_step` on."""
    accumulation = streams[0].layout.accumulation
    per_rank = [run(s, epoch, start_step * accumulation) for s in streams]
    steps = len(per_rank[0]) // accumulation
    return [per_rank[rank][s * accumulation + j] for s in range(steps) for rank in range(len(streams)) for j in range(accumulation)]


@pytest.mark.parametrize("resumed", [(1, 4, 2), (4, 1, 1), (2, 2, 3)])  # (processes, accumulation, workers) of the resume
def test_an_epoch_is_the_same_micro_batches_on_any_number_of_processes(shards, resumed):
    """A run of 2 processes x 2 accumulated micro-batches (2 workers each: 4 lanes), resumed at step 2 on
    another number of processes that keeps the 4 micro-batches per step: every later micro-batch holds
    the same samples, the same augmentation, in the same place, with any number of loader workers."""
    written = [train(shards, rank, 2, 2, 3, accumulation=2) for rank in (0, 1)]
    assert written[0].lanes == 4
    processes, accumulation, workers = resumed
    resumed = [train(shards, rank, processes, workers, 3, accumulation=accumulation, lanes=4) for rank in range(processes)]
    before = micro_batches(written)
    assert len(before) == 4 * len(written[0]) // 2 and set(keys(before)) == TRAIN_KEYS
    assert same(micro_batches(resumed, start_step=2), before[2 * 4:])
    assert same(micro_batches(resumed), before)


def test_lanes_that_do_not_fit_the_step_are_refused(shards):
    with pytest.raises(ValueError, match="6 lanes are not a multiple of the 4 micro-batches per optimizer step"):
        train(shards, 0, 2, 2, 3, accumulation=2, lanes=6)
