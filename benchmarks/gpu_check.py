"""The GPU checks of a cluster run, in one go: the published model's training step in every precision
and memory setting, a one-GPU train.py run that checkpoints and resumes, and one-rank ZeRO-2 in bf16.

Prints one JSON line and exits non-zero when a check fails. No internet: random weights, demo shards.
  - step: Swin-L/384 HERBS as published (F=1536, num_selects 256/128/64/32, 200 classes), batch 8,
    SGD; fp16 with a grad scaler and bf16; fused attention off/on; activation checkpointing off/on:
    finite losses, peak GPU memory, images/s, MFU (herbs/train/throughput.py)
  - train_resume: python train.py (tiny model, bf16) to a checkpoint, then --resume auto to the end
  - zero2_bf16: accelerate launch with configs/accelerate/zero2.yaml on one rank, bf16
Under 8 minutes on one H100/H200. `--cpu-smoke` runs the same checks CPU-sized (a micro model,
bf16 only: fp16 needs a GPU); the test suite runs it.

Run: python benchmarks/gpu_check.py [--cpu-smoke] [--steps 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from herbs.config import from_dict
from herbs.loss import HERBSLoss
from herbs.model import HERBSModel
from herbs.train.optim import build_optimizer
from herbs.train.throughput import peak_flops, train_flops_per_image
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = dict(backbone="swin_large_patch4_window12_384", pretrained=False, img_size=384, num_classes=200,
                 fpn_size=1536, num_selects=[256, 128, 64, 32])
MICRO = dict(backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=64, num_classes=20, fpn_size=32,
             num_selects=[48, 12, 2, 2], backbone_args=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4))
# The same micro model as train.py overrides (JSON values are YAML), on the demo shards this script writes.
MICRO_OVERRIDES = [f"model.{key}={json.dumps(value)}" for key, value in MICRO.items()
                   if key != "pretrained"] + [
    "data.resize=72", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0", "log.wandb=false", "log.every=1",
]


def step_check(model_config: dict, precision: str, fused: bool, checkpointing: bool, batch: int, steps: int,
               device: torch.device) -> dict:
    config = from_dict({"model": {**model_config, "fused_attention": fused, "grad_checkpointing": checkpointing},
                        "data": {"resize": model_config["img_size"]}})
    torch.manual_seed(0)
    model = HERBSModel(config.model).to(device).train()
    loss_fn = HERBSLoss(config.loss)
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    images = torch.randn(batch, 3, config.model.img_size, config.model.img_size, device=device)
    labels = torch.randint(0, config.model.num_classes, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(steps + 2):  # two warm-up steps, not timed
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            outputs = model(images)
        loss, _ = loss_fn(outputs, labels, epoch=0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # also waits for the GPU
        times.append(time.perf_counter() - start)
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    images_per_s = batch / step_s
    peak = peak_flops(device)
    return {
        "precision": precision, "fused_attention": fused, "grad_checkpointing": checkpointing, "batch": batch,
        "finite": all(math.isfinite(x) for x in losses), "first_loss": losses[0], "last_loss": losses[-1],
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "images_per_s": images_per_s,
        "mfu": train_flops_per_image(config.model) * images_per_s / peak if peak else None,
    }


def run(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_checks(tmp: Path, cpu: bool) -> dict:
    from herbs.data.demo import make_demo
    from herbs.data.writer import write_shards

    shards = tmp / "shards"
    write_shards(make_demo(seed=0, train=4, val=1, test=1, size=64), shards)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    common = ["--config", str(REPO / "configs" / "tiny.yaml"), *MICRO_OVERRIDES, f"data.shards={shards}",
              "train.mixed_precision=bf16", "train.checkpoint_every=2"]
    results = {}

    start = time.perf_counter()
    out = tmp / "one"
    first = run([sys.executable, "train.py", *common, f"train.output_dir={out}", "train.max_steps=2"], env, 600)
    second = run([sys.executable, "train.py", *common, f"train.output_dir={out}", "train.max_steps=4", "--resume", "auto"], env, 600)
    latest = out / "herbs-tiny" / "tiny" / "checkpoints" / "latest"
    resumed = "resumed from" in second.stderr and latest.is_file() and latest.read_text().strip() == "step-0000004"
    results["train_resume"] = {"ok": first.returncode == 0 and second.returncode == 0 and resumed,
                               "seconds": time.perf_counter() - start,
                               **({} if resumed else {"log": (first.stderr + second.stderr)[-2000:]})}

    start = time.perf_counter()
    out = tmp / "zero2"
    ds_env = {k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"}  # it would switch DeepSpeed off
    zero2 = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero2.yaml",
                 "--num_processes", "1", "train.py", *common, f"train.output_dir={out}", "train.max_steps=2"], ds_env, 600)
    exported = (out / "herbs-tiny" / "tiny" / "best" / "model.safetensors").is_file()
    results["zero2_bf16"] = {"ok": zero2.returncode == 0 and exported, "seconds": time.perf_counter() - start,
                             **({} if zero2.returncode == 0 and exported else {"log": zero2.stderr[-2000:]})}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU-sized checks (micro model, bf16 only)")
    parser.add_argument("--steps", type=positive, default=10, help="timed training steps per setting (GPU; the CPU smoke times 1)")
    args = parser.parse_args()
    started = time.perf_counter()
    cpu = args.cpu_smoke
    if not cpu and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no GPU here; run with --cpu-smoke for the CPU-sized checks"}))
        return 1
    device = torch.device("cpu" if cpu else "cuda")
    model_config, batch, steps = (MICRO, 2, 1) if cpu else (PUBLISHED, 8, args.steps)
    precisions = ("bf16",) if cpu else ("fp16", "bf16")
    step_results = [step_check(model_config, precision, fused, checkpointing, batch, steps, device)
                    for precision, fused, checkpointing in itertools.product(precisions, (False, True), (False, True))]
    with tempfile.TemporaryDirectory() as tmp:
        trains = train_checks(Path(tmp), cpu)
    report = {
        "device": "cpu" if cpu else torch.cuda.get_device_name(device), "torch": torch.__version__,
        "steps": step_results, **trains,
        "ok": all(r["finite"] for r in step_results) and all(r["ok"] for r in trains.values()),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
