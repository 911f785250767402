"""What a dataset reader hands the shard writer: samples per split, classes, class groups."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from herbs.errors import DataError


@dataclass(frozen=True)
class ClassGroup:
    """Classes that belong together (one CUB family name, one NABirds parent), for group metrics."""

    name: str
    classes: tuple[int, ...]  # class indices 0..N-1


@dataclass(frozen=True)
class Sample:
    source: str  # where the image came from, relative to the dataset root (kept as metadata)
    label: int  # class index 0..N-1
    path: Optional[Path] = None  # the image file ...
    data: Optional[bytes] = None  # ... or its bytes, for generated datasets
    bbox: Optional[tuple[float, float, float, float]] = None  # x, y, width, height in pixels

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


@dataclass
class SourceDataset:
    kind: str  # cub | nabirds | cars | aircraft | dogs | inat | folder | demo
    class_names: list[str]
    original_ids: list[str]  # the dataset's own id of each class index
    splits: dict[str, list[Sample]]
    root: Optional[Path] = None  # the dataset's folder (None for generated data); never written into
    groups: list[ClassGroup] = field(default_factory=list)
    # The dataset's full class tree where it has one (NABirds): id -> (name, parent id or None).
    tree: dict[str, tuple[str, Optional[str]]] = field(default_factory=dict)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist; point the command at the dataset root that holds it")
    return path


def read_table(path: Path, columns: int, *, rest: bool = False) -> list[list[str]]:
    """Whitespace-separated rows of `columns` fields; with `rest` the last field keeps its spaces."""
    try:  # utf-8-sig: a byte-order mark, as some editors save UTF-8, is not part of the first field
        text = require_file(path, "dataset file").read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                        "restore the file from the dataset's archive, or save it as UTF-8") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(None, columns - 1) if rest else line.split()
        if len(fields) != columns:
            raise DataError(
                f"line {number} of '{path}' should have {columns} fields but reads {line.strip()!r}; "
                "restore the file from the dataset's archive"
            )
        rows.append([f.strip() for f in fields])
    return rows


@dataclass(frozen=True)
class ImageRow:
    """One image of a CUB/NABirds-style dataset: its line in each per-image table."""

    image_id: str
    relpath: str  # under images/
    path: Path
    class_id: str
    train: bool
    bbox: Optional[tuple[float, float, float, float]]


def read_image_tables(root: Path) -> list[ImageRow]:
    """images.txt joined with image_class_labels.txt, train_test_split.txt and (when present)
    bounding_boxes.txt, the files CUB-200-2011 and NABirds share; every image checked to exist."""
    images = read_table(root / "images.txt", 2)
    by_id(images, root / "images.txt")  # a line repeated would be a second sample of one image
    labels_path, split_path, boxes_path = (root / n for n in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"))
    labels = by_id(read_table(labels_path, 2), labels_path)
    is_train = by_id(read_table(split_path, 2), split_path)
    boxes = read_boxes(boxes_path)
    paths = image_paths(root / "images", [rel for _, rel in images])
    rows = []
    for (image_id, rel), path in zip(images, paths):
        flag = lookup(is_train, image_id, split_path)
        if flag not in ("0", "1"):
            raise DataError(f"image {image_id} is marked {flag!r} in '{split_path}', which should be 1 (train) or 0 (test); restore that file")
        rows.append(ImageRow(image_id, rel, path, lookup(labels, image_id, labels_path), flag == "1", boxes.get(image_id)))
    return rows


def by_id(rows: list[list[str]], path: Path) -> dict[str, str]:
    """A two-column table as id -> value; one sentence for an id on two lines."""
    table: dict[str, str] = {}
    for image_id, value in rows:
        if image_id in table:
            raise DataError(f"image id {image_id} appears twice in '{path}'; restore that file from the dataset's archive")
        table[image_id] = value
    return table


def lookup(table: dict[str, str], image_id: str, path: Path) -> str:
    if image_id not in table:
        raise DataError(f"image id {image_id} of images.txt has no line in '{path}'; restore that file from the dataset's archive")
    return table[image_id]


def read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """bounding_boxes.txt (`<image id> <x> <y> <width> <height>`), or nothing when the dataset has none."""
    if not path.is_file():
        return {}
    try:
        return {row[0]: tuple(float(v) for v in row[1:]) for row in read_table(path, 5)}
    except ValueError as err:
        raise DataError(f"'{path}' holds a box that is not numbers ({err}); restore that file or delete it") from None


def image_paths(root: Path, relpaths: list[str]) -> list[Path]:
    """Absolute image paths, all checked to exist before any work starts."""
    paths = [root / rel for rel in relpaths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image '{missing[0]}'{more} listed by the dataset does not exist; restore the dataset's images/")
    return paths


def split_samples(rows: list[ImageRow], index_of: dict[str, int]) -> dict[str, list[Sample]]:
    """Train and test samples in the dataset's own order, with class ids turned into indices."""
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for row in rows:
        sample = Sample(source=f"images/{row.relpath}", label=index_of[row.class_id], path=row.path, bbox=row.bbox)
        splits["train" if row.train else "test"].append(sample)
    return splits


def id_order(text: str) -> tuple:
    """Sort numeric ids as numbers ("2" before "10"), anything else after them by text."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def suffix_groups(class_names: list[str], separators: str = "_ ") -> list[ClassGroup]:
    """Group classes by the last word of their name, after any of `separators` (every `*_Warbler` of CUB, every
    `* Warbler` of NABirds), as fine-grained classes are often grouped."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(class_names):
        groups.setdefault(re.split(f"[{re.escape(separators)}]", name)[-1], []).append(index)
    return [ClassGroup(name, tuple(members)) for name, members in sorted(groups.items())]
