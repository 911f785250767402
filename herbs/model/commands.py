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
    from herbs.model.checkpoint import META, MODEL_FILES
    from herbs.model.original import import_checkpoint

    out = Path(args.out)
    others = sorted(p.name for p in out.iterdir() if p.name not in MODEL_FILES) if (out / META).is_file() else []
    if others:  # a model directory is replaced whole: with the checkpoint being imported, if it lies there
        raise HerbsError(f"'{out}' holds {others[0]}, which is not part of a herbs model and which writing the model there "
                         "would delete; move it out, or pass another --out")
    class_names = None
    if args.classes:
        path = Path(args.classes)
        if not path.is_file():
            raise HerbsError(f"class list '{path}' {'does not exist' if not path.exists() else 'is not a file'}; "
                             "pass a text file with one class name per line")
        try:
            class_names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise HerbsError(f"class list '{path}' is not UTF-8 text; save it as UTF-8") from None
        twice = next((name for i, name in enumerate(class_names) if name in class_names[:i]), None)
        if twice is not None:
            raise HerbsError(f"class list '{path}' names '{twice}' twice; every class needs its own name")
    out = import_checkpoint(args.checkpoint, args.config, out, class_names=class_names)
    print(f"wrote {out}")
    return 0
