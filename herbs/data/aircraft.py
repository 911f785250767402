"""FGVC-Aircraft from its own layout: data/images/<id>.jpg, data/variants.txt and
data/images_{variant,family,manufacturer}_{trainval,test}.txt (`<image id> <name with spaces>`).

The 100 variants are the classes (variants.txt's order); trainval becomes train. Family and
manufacturer are kept as the class tree (manufacturer > family > variant) and families are the
class groups.
"""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.source import ClassGroup, Sample, SourceDataset, image_paths, read_table, require_file

LEVELS = ("variant", "family", "manufacturer")


def read_aircraft(root: str | Path) -> SourceDataset:
    root = Path(root)
    data = root / "data" if (root / "data").is_dir() else root
    variants = [line.strip() for line in require_file(data / "variants.txt", "dataset file").read_text().splitlines() if line.strip()]
    index_of = {name: index for index, name in enumerate(variants)}
    family_of, maker_of, splits = {}, {}, {}
    for split, part in (("train", "trainval"), ("test", "test")):
        tables = {level: dict(read_table(data / f"images_{level}_{part}.txt", 2, rest=True)) for level in LEVELS}
        rows = list(tables["variant"].items())
        for image_id, variant in rows:
            if variant not in index_of:
                raise DataError(f"image {image_id} has variant '{variant}', which '{data / 'variants.txt'}' does not list; restore the dataset files")
            for level, into in (("family", family_of), ("manufacturer", maker_of)):
                if image_id not in tables[level]:
                    raise DataError(f"image {image_id} has no line in '{data / f'images_{level}_{part}.txt'}'; restore the dataset files")
            family_of.setdefault(variant, tables["family"][image_id])
            maker_of.setdefault(family_of[variant], tables["manufacturer"][image_id])
        paths = image_paths(data / "images", [f"{image_id}.jpg" for image_id, _ in rows])
        splits[split] = [Sample(source=f"images/{image_id}.jpg", label=index_of[variant], path=path)
                         for (image_id, variant), path in zip(rows, paths)]
    members: dict[str, list[int]] = {}
    for variant in variants:
        members.setdefault(family_of.get(variant, variant), []).append(index_of[variant])
    tree = {f"manufacturer:{m}": (m, None) for m in sorted(set(maker_of.values()))}
    tree |= {f"family:{f}": (f, f"manufacturer:{m}") for f, m in sorted(maker_of.items())}
    tree |= {f"variant:{v}": (v, f"family:{family_of[v]}" if v in family_of else None) for v in variants}
    return SourceDataset(kind="aircraft", root=root, class_names=variants, original_ids=[f"variant:{v}" for v in variants], splits=splits,
                         groups=[ClassGroup(name, tuple(m)) for name, m in sorted(members.items())], tree=tree)
