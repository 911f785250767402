"""Test accuracy of HERBS against its baselines and options, on the demo set, over several seeds.

Trains `configs/demo.yaml` (a tiny Swin from random weights on `herbs shard demo`: 20 look-alike
classes, 960 training images; one thread a run, so a run repeats exactly on one kind of machine)
in ten setups:
  herbs_swin       the demo as it is
  linear_swin      the same backbone with a plain linear head (model.head=linear)
  herbs_convnext   HERBS on a tiny ConvNeXt of the Swin's widths and depths
  linear_convnext  that ConvNeXt with the linear head
  herbs_resnet     HERBS on a ResNet-18 with one block per stage
  herbs_vit        HERBS on a 4-block ViT (patch 8, width 64), tapped at every block
  herbs_efficientnet  HERBS on EfficientNet-B0 as timm builds it
  herbs_swinv2     HERBS on a Swin V2 of the demo Swin's widths and depths
  herbs_ema        HERBS with EMA weights (train.ema_decay), best/ chosen by the average's val top-1
  herbs_mix        HERBS with timm's usual mixup 0.8 / CutMix 1.0 and label smoothing 0.1
and prints one JSON line: per setup, the test ensemble top-1 of each seed (in percent; chance is
5 %), their mean and standard deviation, and the minutes a run took. Runs go `--jobs` at a time
(each is one thread, so this changes their time, not their result). A run already finished under
--out is read, not trained again, and an interrupted one resumes from its checkpoint.
Run: python benchmarks/recipe_demo.py [--seeds 0 1 2] [--jobs 2] [--out /tmp/herbs-recipe-demo]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from herbs.config import load_config
from herbs.data.manifest import MANIFEST
from herbs.run import METRICS_FILE, read_events, read_jsonl, run_dir
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
CONVNEXT = ["model.backbone=convnext_atto", "model.backbone_args={dims: [32, 64, 128, 256], depths: [1, 1, 2, 1]}"]
RESNET = ["model.backbone=resnet18", "model.backbone_args={layers: [1, 1, 1, 1]}"]
EFFICIENTNET = ["model.backbone=efficientnet_b0", "model.backbone_args={}"]
SWINV2 = ["model.backbone=swinv2_tiny_window8_256",
          "model.backbone_args={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], window_size: 3}"]
VIT = ["model.backbone=vit_tiny_patch16_224",
       "model.backbone_args={patch_size: 8, embed_dim: 64, depth: 4, num_heads: 2, out_indices: [0, 1, 2, 3]}"]
SETUPS = {
    "herbs_swin": [],
    "linear_swin": ["model.head=linear"],
    "herbs_convnext": CONVNEXT,
    "linear_convnext": [*CONVNEXT, "model.head=linear"],
    "herbs_resnet": RESNET,
    "herbs_vit": VIT,
    "herbs_efficientnet": EFFICIENTNET,
    "herbs_swinv2": SWINV2,
    "herbs_ema": ["train.ema_decay=0.99", "train.select_best=ema"],
    "herbs_mix": ["data.mixup_alpha=0.8", "data.cutmix_alpha=1.0", "loss.label_smoothing=0.1"],
}
TEST_TOP1 = "test/ensemble_top1"


def demo_shards(where: Path) -> Path:
    if not (where / MANIFEST).is_file():
        done = subprocess.run([sys.executable, "-m", "herbs", "shard", "demo", str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"recipe_demo: {(done.stderr.strip().splitlines() or ['herbs shard demo failed'])[-1]}")
    return where


def overrides(setup: str, seed: int, shards: Path, out: Path, extra: list[str]) -> list[str]:
    # Runs on other shards or with other --set overrides get other names: a finished run is only reused for the same setup.
    tag = "-" + hashlib.sha256(json.dumps([str(shards), extra]).encode()).hexdigest()[:8]
    return [*SETUPS[setup], f"data.shards={shards}", f"train.output_dir={out}", "log.project=recipe-demo",
            f"log.name={setup}-s{seed}{tag}", f"train.seed={seed}", *extra]


def test_top1(run: Path) -> float | None:
    """The finished run's test ensemble top-1, or None while it has none."""
    records = read_jsonl(run / METRICS_FILE) if (run / METRICS_FILE).is_file() else []
    return next((r[TEST_TOP1] for r in reversed(records) if TEST_TOP1 in r), None)


def training_minutes(run: Path) -> float:
    """Minutes the run's attempts took, from their start and end events (so a reused run reports its own time)."""
    minutes, started = 0.0, None
    for event in read_events(run):
        when = datetime.datetime.fromisoformat(event["time"])
        if event.get("event") == "start":
            started = when
        elif event.get("event") == "end" and started is not None:
            minutes, started = minutes + (when - started).total_seconds() / 60, None
    return minutes


def train(setup: str, seed: int, args) -> dict:
    given = overrides(setup, seed, args.shards, args.out, args.set)
    run = run_dir(load_config(DEMO, given))
    if test_top1(run) is None:
        run.mkdir(parents=True, exist_ok=True)
        with (run.parent / f"{run.name}.log").open("a") as log:
            done = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(DEMO), *given],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if done.returncode != 0 or test_top1(run) is None:
            raise SystemExit(f"recipe_demo: {setup} seed {seed} failed (exit {done.returncode}); see {run.parent / f'{run.name}.log'}")
    minutes = training_minutes(run)
    print(f"{setup} seed {seed}: test top-1 {test_top1(run):.2f}% ({minutes:.1f} min)", file=sys.stderr, flush=True)
    return {"setup": setup, "seed": seed, "top1": test_top1(run), "minutes": minutes}


def summary(results: list[dict], setups: list[str]) -> dict:
    out = {}
    for setup in setups:
        mine = sorted((r for r in results if r["setup"] == setup), key=lambda r: r["seed"])
        top1 = [round(r["top1"], 2) for r in mine]
        out[setup] = {"test_top1": top1, "mean": round(statistics.mean(top1), 2),
                      "std": round(statistics.stdev(top1), 2) if len(top1) > 1 else 0.0,
                      "minutes_per_run": round(statistics.mean(r["minutes"] for r in mine), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--jobs", type=positive, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/herbs-recipe-demo"), help="runs and demo shards go here")
    parser.add_argument("--shards", type=Path, default=None, help="demo shards (default: made under --out)")
    parser.add_argument("--set", nargs="*", default=[], help="more section.key=value overrides for every run (e.g. train.epochs=2)")
    args = parser.parse_args()
    if len(set(args.seeds)) < len(args.seeds):  # two threads would train the same run
        parser.error(f"--seeds lists a seed twice ({' '.join(map(str, args.seeds))}); list each once")
    args.out = args.out.resolve()
    args.shards = demo_shards((args.shards or args.out / "shards").resolve())
    jobs = [(setup, seed) for seed in args.seeds for setup in args.setups]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: train(*job, args), jobs))
    print(json.dumps({"config": "configs/demo.yaml", "overrides": args.set, "seeds": args.seeds, "chance": 5.0,
                      "setups": summary(results, args.setups)}))


if __name__ == "__main__":
    main()
