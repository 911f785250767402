"""Small real datasets for the data tests: JPEGs made here, laid out in CUB-200-2011 and
NABirds' own file formats, and shard directories written by herbs itself."""

from __future__ import annotations

import functools
import io
import json
import struct
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from herbs.data.source import Sample, SourceDataset
from herbs.data.tario import ShardWriter, index_name, sha256_file
from herbs.data.writer import ShardSize, write_shards


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth colour fields (what JPEG is made for) plus mild noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg(width: int = 40, height: int = 30, seed: int = 0, **save) -> bytes:
    out = io.BytesIO()
    photo(width, height, seed).save(out, format="JPEG", quality=save.pop("quality", 90), **save)
    return out.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 20000) -> bytes:
    """A decompression bomb: a real grey `side` x `side` PNG (400 megapixels at 20000) of 1.7 MB, built
    row by row here because PIL would hold the whole image in memory to write it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, rows = zlib.compressobj(1), bytes(side + 1) * 500  # each row: filter byte 0, then its pixels
    idat = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


CUB_CLASSES = ["Black_footed_Albatross", "Laysan_Albatross", "Yellow_Warbler", "Pine_Warbler", "Cardinal"]


def make_cub(root: Path, per_class: int = 6, train_per_class: int = 4) -> Path:
    """A CUB-200-2011 layout with `per_class` images of each of CUB_CLASSES."""
    (root / "images").mkdir(parents=True)
    images, labels, splits, boxes, classes = [], [], [], [], []
    image_id = 0
    for class_id, name in enumerate(CUB_CLASSES, 1):
        folder = f"{class_id:03d}.{name}"
        classes.append(f"{class_id} {folder}")
        (root / "images" / folder).mkdir()
        for i in range(per_class):
            image_id += 1
            rel = f"{folder}/{name}_{i:04d}_{image_id}.jpg"
            (root / "images" / rel).write_bytes(jpeg(seed=image_id))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            splits.append(f"{image_id} {1 if i < train_per_class else 0}")
            boxes.append(f"{image_id} 1.0 2.0 30.0 {20 + i}.0")
    for name, lines in (("images", images), ("image_class_labels", labels), ("train_test_split", splits),
                        ("bounding_boxes", boxes), ("classes", classes)):
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


# NABirds: classes.txt names every tree node; only leaves label images. Ids are sparse on purpose.
NABIRDS_NODES = {
    "0": ("Birds", None),
    "1": ("Ducks, Geese, and Swans", "0"),
    "2": ("Perching Birds", "0"),
    "100": ("Mallard", "1"),
    "295": ("Mallard (Male)", "100"),
    "296": ("Mallard (Female/Juvenile)", "100"),
    "313": ("Wood Duck (Breeding male)", "1"),
    "1000": ("Northern Cardinal (Adult Male)", "2"),
}
NABIRDS_LEAVES = ["295", "296", "313", "1000"]


def make_nabirds(root: Path, per_class: int = 5, train_per_class: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    images, labels, splits = [], [], []
    seed = 0
    for class_id in NABIRDS_LEAVES:
        folder = f"{int(class_id):04d}"
        (root / "images" / folder).mkdir()
        for i in range(per_class):
            seed += 1
            image_uuid = uuid.UUID(int=seed)
            rel = f"{folder}/{image_uuid.hex}.jpg"
            (root / "images" / rel).write_bytes(jpeg(seed=seed))
            images.append(f"{image_uuid} {rel}")
            labels.append(f"{image_uuid} {class_id}")
            splits.append(f"{image_uuid} {1 if i < train_per_class else 0}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    (root / "classes.txt").write_text("".join(f"{i} {name}\n" for i, (name, _) in NABIRDS_NODES.items()))
    (root / "hierarchy.txt").write_text("".join(f"{i} {parent}\n" for i, (_, parent) in NABIRDS_NODES.items() if parent))
    return root


def tiny_dataset(num_classes: int = 4, train: int = 10, test: int = 5, seed: int = 0) -> SourceDataset:
    """`train` and `test` images per class, 40x30 JPEGs in memory."""
    names = [f"class_{i}" for i in range(num_classes)]
    splits = {
        split: [
            Sample(source=f"{split}/{label}/{i}.jpg", label=label, data=jpeg(seed=zlib.crc32(f"{seed}/{split}/{label}/{i}".encode())))
            for label in range(num_classes)
            for i in range(count)
        ]
        for split, count in (("train", train), ("test", test))
    }
    return SourceDataset(kind="folder", class_names=names, original_ids=names, splits=splits)


def write_tiny_shards(out: Path, shard_samples: int = 12, **dataset) -> Path:
    write_shards(tiny_dataset(**dataset), out, shard_size=ShardSize(samples=shard_samples))
    return out


def rewrite_shard(out: Path, shard_name: str, changes: dict[str, Optional[dict]], *, truncate_to: Optional[int] = None) -> None:
    """Damage a written shard the way the real world does: `changes` maps a sample key to field
    overrides (None drops the field), `truncate_to` cuts the file. The manifest is updated to the
    new file (as if it had been written so), so only the streaming code sees the damage."""
    path = out / shard_name
    with tarfile.open(path) as tar:
        samples: dict[str, dict[str, bytes]] = {}
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    writer = ShardWriter(path, out / index_name(shard_name))
    for key, fields in samples.items():
        fields = {**fields, **changes.get(key, {})}
        writer.add(key, {ext: data for ext, data in fields.items() if data is not None})
    writer.close()
    if truncate_to is not None:
        path.write_bytes(path.read_bytes()[:truncate_to])
    manifest = json.loads((out / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if shard["name"] == shard_name:
                shard["bytes"], shard["sha256"] = path.stat().st_size, sha256_file(path)
    (out / "manifest.json").write_text(json.dumps(manifest))
