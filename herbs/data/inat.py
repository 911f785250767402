"""iNaturalist 2017, 2018 and 2021 from their COCO-style files: train*.json and val*.json
(`images` with `file_name` relative to the root, `annotations` with `category_id`, `categories`).

Classes are the categories sorted by id. The taxonomy (kingdom ... genus, as 2021's categories
carry it; `supercategory` alone for 2017/2018) becomes the class tree, and each class's parent
(its genus, or its supercategory) its group. The official val set becomes the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

from herbs.errors import DataError
from herbs.data.source import ClassGroup, Sample, SourceDataset, image_paths

RANKS = ("supercategory", "kingdom", "phylum", "class", "order", "family", "genus")
FILES = {"train": ("train.json", "train2021.json", "train2018.json", "train2017.json"),
         "test": ("val.json", "val2021.json", "val2018.json", "val2017.json")}


def annotation_file(root: Path, split: str) -> Path:
    for name in FILES[split]:
        if (root / name).is_file():
            return root / name
    raise DataError(f"'{root}' has none of {', '.join(FILES[split])}; point the command at the iNaturalist folder that holds them")


NEEDS = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id"), "categories": ("id", "name")}


def read_coco(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        for key, fields in NEEDS.items():
            for number, entry in enumerate(data[key]):
                missing = [field for field in fields if field not in entry]
                if missing:
                    raise KeyError(f"{key}[{number}] has no {missing[0]!r}")
                if key == "categories" and not isinstance(entry["id"], int):  # sorted, and named by it, across the files
                    raise TypeError(f"{key}[{number}] has the id {entry['id']!r}, not a whole number")
        return {key: data[key] for key in NEEDS}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"'{path}' is not a COCO-style iNaturalist file ({err.__class__.__name__}: {err}); restore it") from None


def read_inat(root: str | Path) -> SourceDataset:
    root = Path(root)
    files = {split: annotation_file(root, split) for split in FILES}
    coco = {split: read_coco(path) for split, path in files.items()}
    categories = {c["id"]: c for split in coco.values() for c in split["categories"]}
    ids = sorted(categories)
    index_of = {cid: index for index, cid in enumerate(ids)}
    splits = {}
    for split, data in coco.items():
        label_of = {a["image_id"]: a["category_id"] for a in data["annotations"]}
        images = [image for image in data["images"] if image["id"] in label_of]  # 2021's test images carry no label
        unknown = [label_of[image["id"]] for image in images if label_of[image["id"]] not in index_of]
        if unknown:
            raise DataError(f"'{files[split]}' labels an image with category {unknown[0]}, which no categories list names; restore it")
        paths = image_paths(root, [image["file_name"] for image in images])
        splits[split] = [Sample(source=image["file_name"], label=index_of[label_of[image["id"]]], path=path) for image, path in zip(images, paths)]
    tree, members = {}, {}
    for cid in ids:
        parent = None
        for rank in RANKS:
            if categories[cid].get(rank):
                node = f"{rank}:{categories[cid][rank]}"
                tree.setdefault(node, (str(categories[cid][rank]), parent))
                parent = node
        tree[str(cid)] = (categories[cid]["name"], parent)
        members.setdefault(parent, []).append(index_of[cid])
    groups = [ClassGroup(tree[parent][0], tuple(m)) for parent, m in sorted(members.items()) if parent is not None]
    return SourceDataset(kind="inat", root=root, class_names=[categories[cid]["name"] for cid in ids], original_ids=[str(cid) for cid in ids],
                         splits=splits, groups=groups, tree=tree)
