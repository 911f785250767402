"""Throughput of the training input pipeline by shard location, and the cost of planning an epoch.

Prints one JSON line:
  <source>_img_per_s_per_core  TrainStream (no workers, one thread, batch 16: read, shuffle, decode,
                               resize 510, crop 384, augment) over the same --images generated 500x375
                               JPEGs in shards of 20, from: a local directory (seeks), a local HTTP
                               server that serves byte ranges (`python -m RangeHTTPServer` on
                               127.0.0.1; streamed, and verified: fetched whole and sha256-checked),
                               and `pipe:cat` (streamed)
  lanes16_http_{ranges,no_ranges}_img_per_s_per_core
                               the same over 16 lanes of one process, the images in two shards, from
                               that server and from `python -m http.server` (no byte ranges)
  {cub,inat}_samples_read_per_sample_without_ranges
                               samples an epoch reads per sample it trains on when each lane's read
                               starts at its shard's front: CUB (5,994 in 2,000-sample shards, 100 MB
                               each) on 16 GPUs x 8 workers, iNat 2021 (2.7M in 1,000-sample shards)
                               on 256 x 8; with byte ranges it is 1 (plus a lane's overlap)
  plan_*                       one rank's plan (8 workers of 256 ranks x 8: train and eval pieces)
                               for a made-up manifest of 1 and 10 million samples in 1000-sample
                               shards: seconds and peak memory (tracemalloc) per rank
  manifest_*_parse_s           seconds to parse that manifest's JSON, which every rank does first
Run: python benchmarks/data_sources.py [--images 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from data_pipeline import photo_jpeg  # the same photo-like JPEGs as the pipeline benchmark
from herbs.data.fetch import FetchPolicy
from herbs.data.location import locate
from herbs.data.manifest import Manifest, SplitInfo
from herbs.data.plan import EpochOrder, Lanes, eval_pieces
from herbs.data.source import Sample, SourceDataset
from herbs.data.stream import TrainStream
from herbs.data.tario import ShardInfo
from herbs.data.transforms import TrainTransform
from herbs.data.writer import ShardSize, write_shards
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else


def throughput(location: str, fetch: FetchPolicy, images: int, rounds: int, lanes: int = 1) -> float:
    stream = TrainStream(location, "train", TrainTransform(510, 384), rank=0, world_size=1, batch_size=16, num_workers=0, seed=0,
                         lanes=lanes, fetch=fetch)
    batches = (batch for epoch in itertools.count() for batch in stream.epoch(epoch))
    next(batches)  # warm up: lazy imports, the first connection
    count = max(1, rounds * images // 16)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * 16 / (time.perf_counter() - start)


def made_up_split(samples: int, shard_samples: int) -> SplitInfo:
    sizes = [shard_samples] * (samples // shard_samples) + ([samples % shard_samples] if samples % shard_samples else [])
    return SplitInfo("train", tuple(ShardInfo(f"train-{i:06d}.tar", n, 10**8, "0" * 64) for i, n in enumerate(sizes)))


def samples_read_without_ranges(samples: int, shard_samples: int, lanes: int) -> float:
    """Each lane's pieces read from their shard's front to their end, over the samples trained."""
    order = EpochOrder(made_up_split(samples, shard_samples), 0, 0, lanes)
    return sum(piece.stop for lane in range(lanes) for piece in order.own(lane)) / samples


def plan_rank(split: SplitInfo, ranks: int, workers: int) -> None:
    slots = ranks * workers
    layout = Lanes(slots, ranks, 1, rank=0)
    for worker in range(workers):  # rank 0's loader workers; every rank plans only its own lanes
        order = EpochOrder(split, 0, 0, layout.lanes)  # each worker orders the epoch once
        lane, _ = layout.batch(worker)
        order.own(lane)
        next(order.rest(lane))
        eval_pieces(split, worker, slots)


def plan_cost(samples: int, ranks: int = 256, workers: int = 8) -> tuple[float, float]:
    """(seconds, peak MiB) of one rank's plan; timed apart from the memory pass, which tracemalloc slows."""
    split = made_up_split(samples, 1000)
    start = time.perf_counter()
    plan_rank(split, ranks, workers)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    plan_rank(split, ranks, workers)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def manifest_parse_seconds(samples: int) -> float:
    """What every rank pays before planning: reading the made-up split's manifest.json text."""
    root = locate("shards")
    text = Manifest(root, "folder", ["a", "b"], ["a", "b"], [], {"train": made_up_split(samples, 1000)}, {}, {}).to_json()
    start = time.perf_counter()
    Manifest.from_json(root, text)
    return time.perf_counter() - start


def serve(directory: Path, server_module: str = "RangeHTTPServer"):
    """A web server for `directory` in its own process: RangeHTTPServer serves byte ranges, http.server does not."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", server_module, str(port), "--bind", "127.0.0.1"], cwd=directory,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the HTTP server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive, default=200)
    parser.add_argument("--rounds", type=positive, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    result = {"images": args.images, "image_size": [500, 375]}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        samples = [Sample(f"{i}.jpg", i % 2, data=photo_jpeg(i)) for i in range(args.images)]
        write_shards(SourceDataset("folder", ["a", "b"], ["a", "b"], {"train": samples}), shards, shard_size=ShardSize(samples=20))
        server, url = serve(shards)
        try:
            for name, location, fetch in (("local", str(shards), FetchPolicy()), ("http", url, FetchPolicy()),
                                          ("http_verified", url, FetchPolicy(verify=True)), ("pipe_cat", f"pipe:cat {shards}/{{name}}", FetchPolicy())):
                result[f"{name}_img_per_s_per_core"] = round(throughput(location, fetch, args.images, args.rounds), 1)
        finally:
            server.terminate()
            server.wait()
        two_shards = Path(tmp) / "two-shards"
        write_shards(SourceDataset("folder", ["a", "b"], ["a", "b"], {"train": samples}), two_shards, shard_size=ShardSize(samples=-(-args.images // 2)))
        for name, module in (("ranges", "RangeHTTPServer"), ("no_ranges", "http.server")):
            server, url = serve(two_shards, module)
            try:
                result[f"lanes16_http_{name}_img_per_s_per_core"] = round(throughput(url, FetchPolicy(), args.images, args.rounds, lanes=16), 1)
            finally:
                server.terminate()
                server.wait()
    result["cub_samples_read_per_sample_without_ranges"] = round(samples_read_without_ranges(5994, 2000, 16 * 8), 2)
    result["inat_samples_read_per_sample_without_ranges"] = round(samples_read_without_ranges(2_686_843, 1000, 256 * 8), 2)
    for samples in (1_000_000, 10_000_000):
        seconds, mib = plan_cost(samples)
        result[f"plan_{samples // 1_000_000}M_s_per_rank"] = round(seconds, 4)
        result[f"plan_{samples // 1_000_000}M_peak_mib_per_rank"] = round(mib, 2)
        result[f"manifest_{samples // 1_000_000}M_parse_s"] = round(manifest_parse_seconds(samples), 4)
    result["rounds"] = args.rounds
    print(json.dumps(result))


if __name__ == "__main__":
    main()
