"""Throughput of the whole training loop (data, forward, loss, backward, step, logging) on the
tiny config, one process, the fraction of time spent waiting for data, and how long the loader
takes to give the first batch of each epoch (its start-up: new workers, or persistent ones reset).

Prints one JSON line. Builds small demo shards in a temporary directory unless --shards is given.
Run: python benchmarks/train_loop.py [--steps 60] [--workers 2] [--batch 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from herbs.run import METRICS_FILE
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--epochs", type=positive, default=4, help="epochs of the stream whose first batch is timed")
    parser.add_argument("--shards", help="an existing 20-class demo shards directory")
    args = parser.parse_args()
    if args.steps < 2 or args.epochs < 2 or args.workers < 0:  # the medians leave out the first window and the first epoch
        parser.error(f"--steps and --epochs must be 2 or more and --workers 0 or more, got {args.steps}, {args.epochs}, {args.workers}")

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            from herbs.data.demo import make_demo
            from herbs.data.writer import write_shards

            shards = str(Path(tmp) / "demo")
            write_shards(make_demo(seed=0, train=24, val=1, test=1), shards)
        every = max(1, args.steps // 6)
        command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
                   f"data.shards={shards}", "model.num_classes=20", f"train.output_dir={tmp}/runs",
                   f"train.max_steps={args.steps}", f"train.checkpoint_every={10 * args.steps}", f"log.every={every}",
                   f"data.num_workers={args.workers}", f"data.batch_size={args.batch}", "data.verify_checksums=false",
                   "log.wandb=false"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"train_loop: training failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        records = [json.loads(line) for line in (Path(tmp) / "runs" / "herbs-tiny" / "tiny" / METRICS_FILE).read_text().splitlines()]
        first_batch = first_batch_seconds(shards, args.workers, args.batch, args.epochs) if args.workers else None
    windows = [r for r in records if "images_per_s" in r][1:]  # the first window includes start-up
    print(json.dumps({
        "benchmark": "train_loop",
        "config": "configs/tiny.yaml",
        "batch": args.batch,
        "workers": args.workers,
        "steps": args.steps,
        "images_per_s": round(statistics.median(r["images_per_s"] for r in windows), 2),
        "step_time_s": round(statistics.median(r["step_time_s"] for r in windows), 4),
        "data_wait_fraction": round(statistics.median(r["data_wait_fraction"] for r in windows), 4),
        # loader start-up, with workers only: the first epoch's includes starting the forkserver
        "first_batch_s_epoch0": round(first_batch[0], 4) if first_batch else None,
        "first_batch_s_later_epochs": round(statistics.median(first_batch[1:]), 4) if first_batch else None,
    }))


def first_batch_seconds(shards: str, workers: int, batch: int, epochs: int) -> list[float]:
    """Seconds from asking for each epoch to its first batch, for the tiny config's training stream."""
    from herbs.config import load_config
    from herbs.data.stream import train_stream

    config = load_config(REPO / "configs" / "tiny.yaml", [f"data.shards={shards}", f"data.num_workers={workers}",
                                                         f"data.batch_size={batch}", "model.num_classes=20"])
    stream = train_stream(config.data, crop=config.model.img_size, rank=0, world_size=1, seed=0)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for i, _ in enumerate(stream.epoch(epoch)):
            if i == 0:
                seconds.append(time.perf_counter() - start)
    return seconds


if __name__ == "__main__":
    main()
