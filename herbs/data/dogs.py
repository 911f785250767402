"""Stanford Dogs from its own layout: Images/<wnid>-<breed>/<file>.jpg with either train_list.mat and
test_list.mat (`file_list`, 1-based `labels`) or train_list.txt and test_list.txt (one
`<wnid>-<breed>/<file>.jpg` a line, in lists/ or at the root). Classes are the 120 breed folders in
the dataset's order: by their .mat label, which is the order of the sorted folder names the text
lists are read in. The WordNet id is the class's original id, the breed its name."""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.matfile import read_mat
from herbs.data.source import Sample, SourceDataset, image_paths, read_table

SPLITS = ("train", "test")


def read_dogs(root: str | Path) -> SourceDataset:
    root = Path(root)
    lists = root / "lists" if (root / "lists" / "train_list.txt").is_file() else root
    if (root / "train_list.mat").is_file():
        files, folders = read_mat_lists(root)
    elif (lists / "train_list.txt").is_file():
        files, folders = read_text_lists(lists)
    else:
        raise DataError(f"'{root}' has neither train_list.mat nor lists/train_list.txt; point the command at the Stanford Dogs folder "
                        "that holds Images/ and the lists")
    index_of = {folder: index for index, folder in enumerate(folders)}
    wnids, names = zip(*(folder.split("-", 1) if "-" in folder else (folder,) * 2 for folder in folders))
    splits = {}
    for split, listed in files.items():
        paths = image_paths(root / "Images", listed)
        splits[split] = [Sample(source=f"Images/{file}", label=index_of[file.split("/", 1)[0]], path=path) for file, path in zip(listed, paths)]
    return SourceDataset(kind="dogs", root=root, class_names=list(names), original_ids=list(wnids), splits=splits)


def read_mat_lists(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Each split's files, and the breed folders ordered by their label."""
    files, folder_of = {}, {}
    for split in SPLITS:
        path = root / f"{split}_list.mat"
        lists = read_mat(path, "file_list", "labels")
        files[split], labels = [str(f) for f in lists["file_list"]], [int(label) for label in lists["labels"]]
        if len(files[split]) != len(labels):
            raise DataError(f"'{path}' lists {len(files[split])} files but {len(labels)} labels; restore it from the dataset's archive")
        for file, label in zip(files[split], labels):
            folder = file.split("/", 1)[0]
            if folder_of.setdefault(label, folder) != folder:
                raise DataError(f"'{path}' gives label {label} to both '{folder_of[label]}' and '{folder}'; restore it from the dataset's archive")
    return files, [folder_of[label] for label in sorted(folder_of)]


def read_text_lists(lists: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Each split's files, and the breed folders they name, sorted (the .mat labels' order)."""
    files = {}
    for split in SPLITS:
        path = lists / f"{split}_list.txt"
        files[split] = [file for (file,) in read_table(path, 1)]
        loose = [file for file in files[split] if "/" not in file]
        if loose:
            raise DataError(f"'{path}' lists '{loose[0]}' without its breed folder (as in n02085620-Chihuahua/n02085620_5927.jpg); "
                            "restore it from the dataset's archive")
    return files, sorted({file.split("/", 1)[0] for listed in files.values() for file in listed})
