"""`herbs import-checkpoint`: bring a checkpoint of the original HERBS code into herbs' format."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint",
        help="convert a checkpoint of the original HERBS code into a herbs model directory",
        description=(
            "Read a checkpoint saved by the original HERBS code ({'model': state_dict, 'epoch': N}, timm 0.4.12 "
            "Swin layout) together with the YAML config it was trained with, and write a herbs model directory "
            "(model.safetensors, config.yaml, meta.json) that herbs eval / predict / heatmap and training can load. "
            "A config without a 'backbone:' section means the published Swin-L/384."
        ),
    )
    parser.add_argument("checkpoint", help="the original checkpoint, e.g. best.pt")
    parser.add_argument("--config", required=True, help="the original YAML config the checkpoint was trained with")
    parser.add_argument("--out", required=True, help="directory to write the herbs model to")
    parser.add_argument("--classes", help="optional text file with one class name per line, in label order")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from herbs.errors import HerbsError
    from herbs.model.original import import_checkpoint

    class_names = None
    if args.classes:
        path = Path(args.classes)
        if not path.is_file():
            raise HerbsError(f"class list '{path}' does not exist; pass a text file with one class name per line")
        class_names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    out = import_checkpoint(args.checkpoint, args.config, args.out, class_names=class_names)
    print(f"wrote {out}")
    return 0
