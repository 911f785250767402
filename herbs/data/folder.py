"""Labelled image folders: `root/<class>/<image>` (all train), or `root/train/<class>/<image>`
plus optional `root/val/...` and `root/test/...` (in any case: `Train/`). Classes are the sorted
folder names, as in the original HERBS code."""

from __future__ import annotations

import os
from pathlib import Path

from herbs.errors import DataError, not_a_directory
from herbs.data.source import Sample, SourceDataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
# Split folders by other names: read as classes, each would label every image by its split.
LOOKALIKES = ("training", "validation", "valid", "testing")


def class_dirs(root: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def images_in(folder: Path) -> list[Path]:
    """Image files under `folder`, and links to them that lead nowhere: reading those names them, where leaving
    them out here would drop them without a word. Linked folders are followed (Path.rglob does not), each once."""
    found, seen = [], set()
    for top, folders, files in os.walk(folder, followlinks=True):
        folders.sort()  # which of two links to one folder counts: the first by name
        if os.path.realpath(top) in seen:  # a second link to it, or a loop
            folders.clear()
            continue
        seen.add(os.path.realpath(top))
        found += [p for p in map(Path(top).joinpath, files) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and (p.is_file() or p.is_symlink() and not p.exists())]
    return sorted(found)


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders of `root`, by split name, whatever their case; none for a folder of classes."""
    found: dict[str, list[Path]] = {}
    folders = class_dirs(root)
    for folder in folders.values():
        if folder.name.lower() in LOOKALIKES:
            raise DataError(f"folder '{folder}' looks like a split; name the split folders train, val and test, "
                            f"or put the class folders directly in '{root}'")
        if folder.name.lower() in SPLITS:
            found.setdefault(folder.name.lower(), []).append(folder)
    for same in found.values():
        if len(same) > 1:
            raise DataError(f"'{root}' has more than one folder for one split ({', '.join(f.name for f in same)}); keep one")
    others = [name for name in folders if name.lower() not in SPLITS]
    if found and others:  # a class named train, or a stray folder beside the splits: either reading would be a guess
        raise DataError(f"'{root}' holds the split folder '{next(iter(found.values()))[0].name}' beside folders that are no split "
                        f"('{others[0]}'); put every class folder in '{root / 'train'}' (a class may be called train there), "
                        "or move the other folders out")
    return {name: found[name][0] for name in SPLITS if name in found}


def read_folder(root: str | Path) -> SourceDataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder '{root}' {not_a_directory(root)}; pass a folder holding one sub-folder of images per class")
    split_roots = split_folders(root)
    split_roots = split_roots if "train" in split_roots else {"train": root}
    classes = class_dirs(split_roots["train"])
    if not classes:
        raise DataError(f"'{split_roots['train']}' has no class folders; put each class's images in a folder named after the class")
    names = sorted(classes)
    if len(names) == 1:  # e.g. ROOT/images/<class>/...: every image would be of one class
        raise DataError(f"'{split_roots['train']}' holds one class folder ('{names[0]}'), and a classifier needs two or more; "
                        f"pass the folder that holds one sub-folder per class (perhaps '{classes[names[0]]}')")
    index_of = {name: index for index, name in enumerate(names)}
    splits = {}
    for split, split_root in split_roots.items():
        samples = []
        for name, folder in class_dirs(split_root).items():
            if name not in index_of:
                raise DataError(f"class folder '{folder}' has no counterpart in '{split_roots['train']}'; every class needs training images")
            samples += [Sample(source=str(p.relative_to(root)), label=index_of[name], path=p) for p in images_in(folder)]
        splits[split] = samples
    present = {sample.label for sample in splits["train"]}
    empty = [name for name in names if index_of[name] not in present]
    if empty:
        raise DataError(f"class folder '{classes[empty[0]]}' has no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove it")
    return SourceDataset(kind="folder", class_names=names, original_ids=names, splits=splits, root=root)
