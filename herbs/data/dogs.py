"""Stanford Dogs from its own layout: Images/<wnid>-<breed>/<file>.jpg with train_list.mat and
test_list.mat (`file_list`, 1-based `labels`). Classes are the 120 breed folders, sorted by
their label; the WordNet id is the class's original id, the breed its name."""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.matfile import read_mat
from herbs.data.source import Sample, SourceDataset, image_paths


def read_dogs(root: str | Path) -> SourceDataset:
    root = Path(root)
    splits, folders = {}, {}
    for split in ("train", "test"):
        path = root / f"{split}_list.mat"
        lists = read_mat(path, "file_list", "labels")
        files, labels = [str(f) for f in lists["file_list"]], [int(label) for label in lists["labels"]]
        if len(files) != len(labels):
            raise DataError(f"'{path}' lists {len(files)} files but {len(labels)} labels; restore it from the dataset's archive")
        for file, label in zip(files, labels):
            folder = file.split("/", 1)[0]
            if folders.setdefault(label, folder) != folder:
                raise DataError(f"'{path}' gives label {label} to both '{folders[label]}' and '{folder}'; restore it from the dataset's archive")
        paths = image_paths(root / "Images", files)
        splits[split] = [(file, label, p) for file, label, p in zip(files, labels, paths)]
    order = sorted(folders)
    index_of = {label: index for index, label in enumerate(order)}
    wnids, names = zip(*(folders[label].split("-", 1) if "-" in folders[label] else (folders[label],) * 2 for label in order))
    return SourceDataset(
        kind="dogs", root=root, class_names=list(names), original_ids=list(wnids),
        splits={split: [Sample(source=f"Images/{file}", label=index_of[label], path=p) for file, label, p in rows]
                for split, rows in splits.items()},
    )
