"""Herbs against the original HERBS code, side by side: same config, same weights, same batches.

    python benchmarks/vs_original.py ORIGINAL_CHECKOUT [--size fixture|published-narrow|published]
        [--repeats 3] [--steps 3] [--threads 2] [--device cpu|cuda] [--precision fp32|bf16|fp16]
        [--original-precision fp32|bf16|fp16]
        [--fused-attention] [--matmul-heads]

ORIGINAL_CHECKOUT is chou141253/FGVC-HERBS at f3deb47. Its code runs in a process of its own with the
checkout first on sys.path (its vendored timm 0.4.12, tools/original_code.py); herbs runs in another,
from the weights the original's process saved, translated by `herbs.model.original`. The two kinds of
process alternate `--repeats` times (the order flips every round), each timing a training step
(forward + HERBS loss + backward + SGD step, each side with its own optimizer code: torch's SGD as the
original's main.py builds it, herbs' `build_optimizer` with the same settings) and the same backbone
with a plain head (mean-pool + linear), interleaved. On CPU herbs' process keeps freed memory for
the next step as `herbs train` does (herbs.train.host_memory); the original's runs as its main.py
does. For both under the same malloc settings, set them for the command (herbs then leaves them):
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456. Prints one JSON
line: medians over the rounds, ratios herbs / original, the spread of the per-round ratios, and
each side's eval-mode loss on the batch (they should agree).

Sizes: `fixture` is the reference fixture's model (Swin embed 32, 224 px, F 64), batch 8;
`published-narrow` the published widths (embed 192, 384 px, F 1536, num_selects 256/128/64/32,
200 classes) with depths 2-2-2-2, batch 2, for a CPU; `published` is Swin-L/384 as published,
batch 8, for a GPU. With --precision bf16/fp16 both sides run under autocast (fp16 with a grad
scaler, as the original's main.py), unless --original-precision gives the original another (herbs
bf16 against the original's fp16 loop); --fused-attention switches herbs to timm's fused
attention, --matmul-heads to model.matmul_heads.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import original_code  # noqa: E402  (imports nothing of herbs, so the original's process can use it)

FIXTURE_CONFIG = REPO / "tests" / "fixtures" / "herbs_reference" / "config.yaml"
PUBLISHED = dict(data_size=384, fpn_size=1536, num_classes=200, num_selects=dict(layer1=256, layer2=128, layer3=64, layer4=32),
                 backbone=dict(img_size=384, window_size=12, embed_dim=192, num_heads=[6, 12, 24, 48]))
SIZES = {  # name: (overrides of the fixture's config.yaml, Swin depths, batch)
    "fixture": ({}, [2, 2, 2, 2], 8),
    "published-narrow": (PUBLISHED, [2, 2, 2, 2], 2),
    "published": (PUBLISHED, [2, 2, 18, 2], 8),
}
SEED = 0


def recipe(size: str) -> tuple[dict, int]:
    """The original's config mapping for a size (fixture layout, one micro-batch per step) and the batch."""
    overrides, depths, batch = SIZES[size]
    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())
    cfg.pop("fixture")
    cfg.update({k: v for k, v in overrides.items() if k != "backbone"})
    cfg["backbone"].update(overrides.get("backbone", {}), depths=depths)
    cfg["update_freq"] = 1
    return cfg, batch


def batch_for(cfg: dict, batch: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(SEED + 1)
    images = torch.randn(batch, 3, cfg["data_size"], cfg["data_size"], generator=generator)
    labels = torch.randint(0, cfg["num_classes"], (batch,), generator=generator)
    return images.to(device), labels.to(device)


def plain_head(backbone, tap_output, channels: int, num_classes: int):
    """The backbone with mean-pool + linear on its last tap; `tap_output(backbone(x))` is that tap."""
    import torch
    from torch import nn

    torch.manual_seed(SEED + 2)
    head = nn.Linear(channels, num_classes)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, images):
            return self.head(tap_output(self.backbone(images)).mean(1))

    return Plain()


def time_side(args, model, loss_fn, plain, make_optimizer) -> dict:
    import torch

    from timing import median_times, step_fn

    images, labels = batch_for(args.cfg, args.batch, args.device)
    model.to(args.device).eval()
    with torch.no_grad():
        eval_loss = float(loss_fn(model(images), labels))
    plain.to(args.device)
    full_s, plain_s = median_times([step_fn(model, loss_fn, images, labels, args.precision, make_optimizer),
                                    step_fn(plain, torch.nn.functional.cross_entropy, images, labels, args.precision,
                                            make_optimizer)],
                                   args.steps, warmup=1)
    return {"step_s": full_s, "plain_s": plain_s, "eval_loss": eval_loss}


def run_original(args) -> dict:
    original_code.use_checkout(args.checkout)
    import torch

    from timing import original_sgd

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = original_code.build(args.cfg)
    if not args.weights.exists():
        torch.save({"model": model.state_dict()}, args.weights)
    plain = plain_head(copy.deepcopy(model.backbone), lambda taps: taps["layer4"], model.backbone.num_features, args.cfg["num_classes"])
    return time_side(args, model, lambda outs, y: original_code.loss_terms(model, args.cfg, outs, y, 0)[1], plain, original_sgd)


def run_herbs(args) -> dict:
    import dataclasses

    import torch

    from herbs.config import OptimConfig
    from herbs.loss import HERBSLoss
    from herbs.model.original import config_from_original, load_original
    from herbs.train.host_memory import keep_freed_memory
    from herbs.train.optim import build_optimizer
    from timing import SGD_SETTINGS

    torch.set_num_threads(args.threads)
    kept = args.device == "cpu" and keep_freed_memory()  # as `herbs train` does on CPU
    config_file = args.weights.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(args.cfg))
    config = config_from_original(config_file)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, fused_attention=args.fused_attention,
                                                                   matmul_heads=args.matmul_heads))
    model, _ = load_original(args.weights, config)
    loss = HERBSLoss(config.loss)
    plain = plain_head(copy.deepcopy(model.backbone), lambda taps: taps[-1], model.backbone.channels[-1], config.model.num_classes)
    optim = OptimConfig(**SGD_SETTINGS)  # the original's settings, herbs' optimizer
    timed = time_side(args, model, lambda outs, y: loss(outs, y, 0)[0], plain, lambda m: build_optimizer(m, optim))
    return {**timed, "keeps_freed_memory": kept}


def child(side: str, args, weights: Path) -> dict:
    precision = args.original_precision if side == "original" else args.precision
    command = [sys.executable, __file__, str(args.checkout), "--side", side, "--weights", str(weights),
               *(f"--{k}={v}" for k, v in (("size", args.size), ("steps", args.steps), ("threads", args.threads),
                                           ("device", args.device), ("precision", precision)))]
    command += [flag for flag, on in (("--fused-attention", args.fused_attention), ("--matmul-heads", args.matmul_heads)) if on]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {side} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def compare(args) -> dict:
    rounds = {"original": [], "herbs": []}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        for r in range(args.repeats):
            # The original's process goes first in round 0: it writes the weights both sides use.
            for side in ("original", "herbs") if r % 2 == 0 else ("herbs", "original"):
                rounds[side].append(child(side, args, weights))
    med = {side: {key: statistics.median(r[key] for r in runs) for key in ("step_s", "plain_s")} for side, runs in rounds.items()}
    pairs = list(zip(rounds["herbs"], rounds["original"]))
    heads = {side: med[side]["step_s"] - med[side]["plain_s"] for side in med}
    return {
        "benchmark": "vs_original", "size": args.size, "batch": args.batch, "threads": args.threads, "device": args.device,
        "precision": args.precision, "original_precision": args.original_precision, "fused_attention": args.fused_attention,
        "matmul_heads": args.matmul_heads, "repeats": args.repeats, "steps": args.steps,
        "herbs_step_s": round(med["herbs"]["step_s"], 4), "original_step_s": round(med["original"]["step_s"], 4),
        "herbs_over_original": round(med["herbs"]["step_s"] / med["original"]["step_s"], 3),
        "herbs_over_original_per_round": spread([h["step_s"] / o["step_s"] for h, o in pairs]),
        "herbs_plain_step_s": round(med["herbs"]["plain_s"], 4), "original_plain_step_s": round(med["original"]["plain_s"], 4),
        "plain_herbs_over_original": round(med["herbs"]["plain_s"] / med["original"]["plain_s"], 3),
        "plain_herbs_over_original_per_round": spread([h["plain_s"] / o["plain_s"] for h, o in pairs]),
        "heads_herbs_s": round(heads["herbs"], 4), "heads_original_s": round(heads["original"], 4),
        "heads_herbs_over_original": round(heads["herbs"] / heads["original"], 3) if heads["original"] > 0 else None,
        "eval_loss": {side: runs[0]["eval_loss"] for side, runs in rounds.items()},
        "herbs_keeps_freed_memory": rounds["herbs"][0]["keeps_freed_memory"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of chou141253/FGVC-HERBS at f3deb47")
    parser.add_argument("--size", choices=list(SIZES), default="published-narrow")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one original and one herbs process")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each model per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--original-precision", choices=["fp32", "bf16", "fp16"], default=None,
                        help="the original's precision when it differs from herbs' (e.g. herbs bf16 against the original's fp16 loop)")
    parser.add_argument("--fused-attention", action="store_true", help="herbs with timm's fused attention")
    parser.add_argument("--matmul-heads", action="store_true", help="herbs with model.matmul_heads (per-token classifiers as matrix products)")
    parser.add_argument("--side", choices=["original", "herbs"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag in ("repeats", "steps", "threads"):  # herbs is not imported here: this file also runs beside the original code
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be 1 or more, got {getattr(args, flag)}")
    args.checkout = args.checkout.resolve()
    problem = original_code.check_checkout(args.checkout)
    if problem:
        print(json.dumps({"benchmark": "vs_original", "error": problem}))
        return 2
    args.original_precision = args.original_precision or args.precision
    if "fp16" in (args.precision, args.original_precision) and args.device == "cpu":
        parser.error("fp16 needs --device cuda (the original trains fp16 with a CUDA grad scaler)")
    args.cfg, args.batch = recipe(args.size)
    if args.side:
        print(json.dumps((run_original if args.side == "original" else run_herbs)(args)))
    else:
        print(json.dumps(compare(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
