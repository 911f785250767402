"""`SourceDataset` -> `<split>-NNNNNN.tar` shards + `manifest.json`.

JPEG and PNG bytes go into the shards untouched (a camera's JPEG with more frames appended, MPO
to Pillow, too: its first frame is the photo); any other format is re-encoded as PNG (lossless)
and counted in the manifest's notes, except floating-point pixels, which 8 bits cannot hold:
those are left out. A class, or a whole dataset, with no readable image stops the write before
its manifest. Samples are shuffled once, with the seed, before they are packed, so that any run
of samples in a shard is a random draw of classes (the datasets list their images class by class). The manifest is deleted first and written
last, so a directory with a manifest always holds complete shards; which files of the output
directory may be replaced, and the lock against a second writer, are `outdir.py`'s; writing
through a `pipe:` command or URL is `upload.py`'s.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from herbs.errors import DataError
from herbs.data.decode import DEFAULT_MAX_PIXELS, DecodeError, opened
from herbs.data.location import locate
from herbs.data.manifest import MANIFEST, Manifest, SplitInfo
from herbs.data.outdir import OutputDir
from herbs.data.source import Sample, SourceDataset
from herbs.data.tario import Fields, ShardInfo, ShardWriter, index_name, member_bytes
from herbs.data.upload import UploadOutput
from herbs.data.val_split import hold_out_val
from herbs.progress import Progress

log = logging.getLogger(__name__)

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}
KEPT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}  # Pillow's formats whose bytes go into the shards as they are
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass(frozen=True)
class ShardSize:
    """When to start a new shard: after `samples` samples, or before exceeding `bytes`."""

    samples: Optional[int] = None
    bytes: Optional[int] = None

    def full(self, writer: ShardWriter, fields: Fields) -> bool:
        if writer.num_samples == 0:
            return False
        if self.samples is not None:
            return writer.num_samples >= self.samples
        return writer.bytes + member_bytes(fields) > self.bytes


def parse_shard_size(text: str) -> ShardSize:
    """"1000" is a number of samples; "100MB", "1.5GB", "500kB" are bytes (powers of 1000)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0 or (not match.group(2) and "." in match.group(1)):
        raise DataError(f"--shard-size '{text}' is neither a number of samples (1000) nor a size in bytes (100MB, 1GB)")
    number, unit = match.groups()
    if not unit:
        return ShardSize(samples=int(number))
    return ShardSize(bytes=int(float(number) * UNITS[unit if unit.endswith("b") else unit + "b"]))


def image_fields(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, bytes, Optional[str]]:
    """(extension, bytes, original format if re-encoded); `DecodeError` for bytes that are no usable image."""
    with opened(data, max_pixels) as image:
        # Decoded once, so that a file cut short is left out here, not skipped in every epoch; a JPEG (kept
        # as it is) at an eighth of its size, which still reads every coefficient (0.2 ms for 500x375).
        if KEPT.get(image.format) == "jpg":
            image.draft("RGB", (1, 1))
        image.load()
        if image.format in KEPT:
            return KEPT[image.format], data, None
        if image.mode == "F":  # its values may lie anywhere: converting them to 8 bits could leave a black picture
            raise DecodeError(f"a {image.format} of 32-bit floating-point pixels, which has no lossless PNG form; convert it yourself")
        converted = image if image.mode in PNG_MODES else image.convert("RGBA" if "A" in image.mode else "RGB")
        out = io.BytesIO()
        converted.save(out, format="PNG")
        return "png", out.getvalue(), image.format


def check_output(out: Path, dataset: SourceDataset) -> None:
    if dataset.root is None:
        return
    root, target = dataset.root.resolve(), out.resolve()
    if target == root or root in target.parents:
        raise DataError(f"output '{out}' is inside the dataset '{dataset.root}', which is never written into; choose a folder outside it")


def sample_fields(sample: Sample, dataset: SourceDataset, image: tuple[str, bytes, Optional[str]]) -> Fields:
    ext, data, reencoded_from = image
    meta = {"source": sample.source, "class": dataset.class_names[sample.label], "class_id": dataset.original_ids[sample.label]}
    if sample.bbox is not None:
        meta["bbox"] = list(sample.bbox)
    if reencoded_from:
        meta["reencoded_from"] = reencoded_from
    return {ext: data, "cls": str(sample.label).encode(), "json": json.dumps(meta, sort_keys=True).encode()}


def write_split(name: str, samples: list[Sample], dataset: SourceDataset, out: OutputDir, size: ShardSize, seed: int, notes: dict,
                max_pixels: int, written_per_class: Counter) -> SplitInfo:
    order = list(samples)
    random.Random(f"{seed}/{name}").shuffle(order)
    shards: list[ShardInfo] = []
    writer: Optional[ShardWriter] = None
    written = 0
    for sample in Progress(len(order), f"shard {name}", unit="img").wrap(order):
        try:
            data = sample.read()
        except OSError as err:
            raise DataError(f"cannot read image '{sample.path}' ({err.strerror}); check that the dataset is readable") from None
        try:
            image = image_fields(data, max_pixels)
        except DecodeError as err:
            log.warning("skipping '%s': not a readable image: %s", sample.source, err)
            notes["unreadable"].append(sample.source)
            continue
        notes["reencoded_as_png"] += image[2] is not None
        fields = sample_fields(sample, dataset, image)
        if writer is not None and size.full(writer, fields):
            shards.append(finish(writer, out))
            writer = None
        if writer is None:
            shard_name = f"{name}-{len(shards):06d}.tar"
            writer = ShardWriter(out.new(shard_name), out.new(index_name(shard_name)))
        writer.add(f"{name}_{written:06d}", fields)
        written += 1
        written_per_class[sample.label] += 1
    if writer is not None:
        shards.append(finish(writer, out))
    return SplitInfo(name, tuple(shards))


def finish(writer: ShardWriter, out: "OutputDir | UploadOutput") -> ShardInfo:
    info = writer.close()
    out.finished(info.index)  # the index before its shard: a shard that is there has its index
    out.finished(info.name)
    return info


def check_every_class_written(dataset: SourceDataset, written_per_class: Counter, unreadable: list[str]) -> None:
    """One sentence, before the manifest is written, when a class (or every class) got no image: training
    could never learn it."""
    empty = [name for label, name in enumerate(dataset.class_names) if not written_per_class[label]]
    if len(empty) == len(dataset.class_names):
        raise DataError(f"no image of {dataset.root or 'the dataset'} could be read ({len(unreadable)} files left out, named above); "
                        "fix those files, or raise --max-image-pixels for those over its limit")
    if empty:
        more = f" (nor do {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        raise DataError(f"class '{empty[0]}' has no readable image{more}: its files were left out, named above; "
                        "fix or remove them, or remove the class from the dataset")


def write_shards(
    dataset: SourceDataset,
    out: str | Path,
    *,
    shard_size: ShardSize = ShardSize(bytes=100 * 10**6),
    seed: int = 0,
    val_fraction: float = 0.0,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Manifest:
    """Write `dataset` into `out`: a new or empty directory, an interrupted write, or (with
    `overwrite`) an earlier herbs output, whose files alone are replaced (`outdir.py`)."""
    location = locate(out)
    if location.local:
        out = location.path
        check_output(out, dataset)
    if val_fraction:
        dataset = hold_out_val(dataset, val_fraction, seed)
    notes = {"seed": seed, "val_fraction": val_fraction, "reencoded_as_png": 0, "unreadable": []}
    with (OutputDir(out, overwrite) if location.local else UploadOutput(location)) as output:
        splits, written_per_class = {}, Counter()
        for name, samples in dataset.splits.items():
            split = write_split(name, samples, dataset, output, shard_size, seed, notes, max_pixels, written_per_class)
            if split.num_samples:
                splits[name] = split
            else:
                log.warning("split '%s' has no images and is left out", name)
        check_every_class_written(dataset, written_per_class, notes["unreadable"])
        manifest = Manifest(location, dataset.kind, dataset.class_names, dataset.original_ids, dataset.groups, splits, dataset.tree, notes)
        output.write_manifest(MANIFEST, manifest.to_json())
    return manifest
