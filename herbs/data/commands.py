"""`herbs shard {cub,nabirds,cars,aircraft,dogs,inat,folder} SRC OUT`, `herbs shard demo OUT`, `herbs shard verify OUT`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from herbs.errors import DataError, not_a_directory
from herbs.data.aircraft import read_aircraft
from herbs.data.cars import read_cars
from herbs.data.cub import read_cub
from herbs.data.decode import DEFAULT_MAX_PIXELS
from herbs.data.demo import make_demo
from herbs.data.dogs import read_dogs
from herbs.data.folder import read_folder
from herbs.data.inat import read_inat
from herbs.data.manifest import Manifest, verify_shards
from herbs.data.nabirds import read_nabirds
from herbs.data.writer import parse_shard_size, write_shards

READERS = {
    "cub": (read_cub, "CUB-200-2011 (images.txt, image_class_labels.txt, classes.txt, train_test_split.txt)"),
    "nabirds": (read_nabirds, "NABirds (the CUB files plus hierarchy.txt; class ids remapped to 0..N-1)"),
    "cars": (read_cars, "Stanford Cars (cars_train/, cars_test/, devkit/*.mat, cars_test_annos_withlabels.mat; or names.csv, anno_{train,test}.csv, car_data/)"),
    "aircraft": (read_aircraft, "FGVC-Aircraft (data/images/, data/variants.txt, data/images_{variant,family,manufacturer}_*.txt)"),
    "dogs": (read_dogs, "Stanford Dogs (Images/ with train_list.mat, test_list.mat or lists/{train,test}_list.txt)"),
    "inat": (read_inat, "iNaturalist 2017/2018/2021 (train*.json, val*.json, images as the files name them)"),
    "folder": (read_folder, "an image folder: SRC/<class>/<image>, or SRC/train/<class>/<image> plus SRC/val, SRC/test"),
}


def summary(manifest: Manifest) -> str:
    splits = ", ".join(f"{s.name} {s.num_samples} in {len(s.shards)} shards" for s in manifest.splits.values())
    return f"{manifest.root}: {manifest.num_classes} classes; {splits}"


def write(args: argparse.Namespace, dataset) -> int:
    manifest = write_shards(dataset, args.out, shard_size=parse_shard_size(args.shard_size), seed=args.seed, val_fraction=args.val_fraction,
                            overwrite=args.overwrite, max_pixels=args.max_image_pixels)
    print(f"wrote {summary(manifest)}")
    if manifest.notes["reencoded_as_png"]:
        print(f"{manifest.notes['reencoded_as_png']} images that were neither JPEG nor PNG were re-encoded as PNG (lossless)")
    if manifest.notes["unreadable"]:
        print(f"{len(manifest.notes['unreadable'])} files were not readable images and were left out (listed in the manifest's notes)")
    return 0


def run_reader(args: argparse.Namespace) -> int:
    if not Path(args.src).is_dir():
        raise DataError(f"dataset folder '{args.src}' {not_a_directory(args.src)}; pass the folder that holds the dataset")
    return write(args, READERS[args.source][0](args.src))


def run_demo(args: argparse.Namespace) -> int:
    return write(args, make_demo(args.seed))


def run_verify(args: argparse.Namespace) -> int:
    manifest = verify_shards(args.out)
    print(f"ok: {summary(manifest)}; sizes, sample counts and sha256 match the manifest")
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_pixel_limit(parser: argparse.ArgumentParser, default: Optional[int], shown: str) -> None:
    """--max-image-pixels, for every command that reads image files (the limit is `herbs.data.decode`'s)."""
    parser.add_argument("--max-image-pixels", type=positive, default=default, metavar="N",
                        help=f"skip, and name, images of more pixels without decoding them (decompression bombs) (default: {shown})")


def add_write_options(parser: argparse.ArgumentParser, *, val_fraction: bool = True) -> None:
    parser.add_argument("--shard-size", default="100MB", help="a shard's target size: bytes (100MB, 1GB) or a number of samples (1000) (default: 100MB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order and the val hold-out (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards herbs wrote into OUT before (the files its manifest lists); nothing else is removed")
    add_pixel_limit(parser, DEFAULT_MAX_PIXELS, f"{DEFAULT_MAX_PIXELS:,}")
    if val_fraction:
        parser.add_argument("--val-fraction", type=float, default=0.0, help="hold out this class-stratified fraction of train as a val split (e.g. 0.1)")


def register(subparsers) -> None:
    shard = subparsers.add_parser(
        "shard",
        help="turn a dataset into WebDataset tar shards plus a manifest",
        description="Write a dataset as OUT/<split>-NNNNNN.tar shards (original JPEG bytes) and OUT/manifest.json, or verify them.",
    )
    sources = shard.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name, (_, help_text) in READERS.items():
        parser = sources.add_parser(name, help=help_text)
        parser.add_argument("src", metavar="SRC", help="the dataset's folder (read only)")
        parser.add_argument("out", metavar="OUT", help="the shards directory to write, or a location such as 'pipe:aws s3 cp - s3://b/shards/{name}'")
        add_write_options(parser)
        parser.set_defaults(func=run_reader)
    demo = sources.add_parser("demo", help="generate the synthetic 20-class demo dataset (train/val/test) as shards")
    demo.add_argument("out", metavar="OUT", help="the shards directory to write, or a location such as 'pipe:aws s3 cp - s3://b/shards/{name}'")
    add_write_options(demo, val_fraction=False)
    demo.set_defaults(func=run_demo, val_fraction=0.0)
    verify = sources.add_parser("verify", help="check a shards directory's sizes, sample counts and sha256 against its manifest")
    verify.add_argument("out", metavar="OUT", help="the shards directory")
    verify.set_defaults(func=run_verify)
