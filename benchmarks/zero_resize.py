"""How long re-partitioning ZeRO optimizer state onto another process count takes, per process.

Writes the optimizer partitions DeepSpeed saves for a model of --params parameters on --written
processes (fp32 master weights and SGD momentum, DeepSpeed's ZeRO-1/2 file format), then times what
each resumed process does in `herbs.train.zero_resize`: read every old partition and re-cut the
momentum into its own new partition (ZeRO-3 reads the same bytes and cuts per parameter). Prints
one JSON line, with the same figure scaled to the published model (configs/cub200.yaml's parameter
count; the work is linear in it: reading and copying).

    python benchmarks/zero_resize.py                 # 20M parameters, 4 -> 2 processes
    python benchmarks/zero_resize.py --params 5e6 --written 2 --resumed 1
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from herbs.config import load_config
from herbs.model import HERBSModel
from herbs.train.zero_resize import partitions, recut
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

REPO = Path(__file__).resolve().parents[1]


def write_partitions(folder: Path, params: int, processes: int) -> None:
    size = math.ceil(params / (2 * processes)) * 2  # DeepSpeed aligns each partition to 2 elements
    for rank in range(processes):
        numel = min(size, max(0, params - rank * size))
        state = {"momentum_buffer": torch.randn(size)}
        partition = {"base_optimizer_state": {"state": {0: state}, "param_groups": [{}]},
                     "single_partition_of_fp32_groups": [torch.randn(numel)]}
        torch.save({"optimizer_state_dict": partition}, folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")


def published_parameters() -> int:
    with torch.device("meta"):
        model = HERBSModel(load_config(REPO / "configs" / "cub200.yaml", ["model.pretrained=false"]).model)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=20e6)
    parser.add_argument("--written", type=positive, default=4, help="processes that wrote the checkpoint")
    parser.add_argument("--resumed", type=positive, default=2, help="processes that resume it")
    args = parser.parse_args()
    if not args.params >= 1:
        parser.error(f"--params must be 1 or more, got {args.params:g}")
    params = int(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        write_partitions(Path(tmp), params, args.written)
        start = time.perf_counter()
        old = partitions(Path(tmp))
        numel = math.ceil(params / (2 * args.resumed)) * 2
        recut(old, 0, "momentum_buffer", params, 0, numel)
        seconds = time.perf_counter() - start
    published = published_parameters()
    print(json.dumps({"params": params, "written_on": args.written, "resumed_on": args.resumed,
                      "seconds_per_process": round(seconds, 3), "published_params": published,
                      "published_seconds_per_process_estimate": round(seconds * published / params, 1)}))


if __name__ == "__main__":
    main()
