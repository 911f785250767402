"""Throughput of the whole training loop (data, forward, loss, backward, step, logging) on the
tiny config, one process, and the fraction of time spent waiting for data.

Prints one JSON line. Builds small demo shards in a temporary directory unless --shards is given.
Run: python benchmarks/train_loop.py [--steps 60] [--workers 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shards", help="an existing 20-class demo shards directory")
    args = parser.parse_args()

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
        subprocess.run(command, check=True, capture_output=True, text=True)
        records = [json.loads(line) for line in (Path(tmp) / "runs" / "herbs-tiny" / "tiny" / "metrics.jsonl").read_text().splitlines()]
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
    }))


if __name__ == "__main__":
    main()
