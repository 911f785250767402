"""Cost of one optimizer step on a model's parameters: herbs' optimizer against torch's default.

    python benchmarks/optimizer_step.py [--config configs/cub200.yaml] [section.key=value ...] [--steps 5] [--threads N]

Builds the config's model (random weights), gives every parameter a gradient and times `step()` of
herbs' `build_optimizer` (torch's fused kernel) and of the same optimizer as torch builds it by
default (on CPU a Python loop over the tensors; the original code's optimizer), interleaved. Prints one
JSON line: parameters, median seconds per step of each, their ratio. The default config is the
published recipe (Swin-L/384, 254 M parameters, ~3 GB for weights, gradients and momentum).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch

from herbs.config import load_config
from herbs.model.build import build_model
from herbs.train.optim import build_optimizer
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else
from timing import median_times

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "cub200.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--steps", type=positive, default=5)
    parser.add_argument("--threads", type=positive, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config, ["model.pretrained=false", *args.overrides])
    model = build_model(config.model, load_pretrained=False)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    herbs = build_optimizer(model, config.optim)
    accepted = inspect.signature(type(herbs)).parameters  # AdamW's defaults also hold Adam's decoupled_weight_decay
    settings = {key: value for key, value in herbs.defaults.items() if key in accepted and key not in ("fused", "foreach")}
    default = type(herbs)(herbs.param_groups[0]["params"], **settings)  # the same optimizer, torch's choice of kernel
    herbs_s, default_s = median_times([herbs.step, default.step], args.steps, warmup=1)
    print(json.dumps({
        "benchmark": "optimizer_step", "config": Path(args.config).name, "optimizer": config.optim.name,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": args.threads,
        "herbs_step_s": round(herbs_s, 4), "torch_default_step_s": round(default_s, 4),
        "herbs_over_default": round(herbs_s / default_s, 3),
    }))


if __name__ == "__main__":
    main()
