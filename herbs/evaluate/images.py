"""Image files (not shards) to uint8 batches: for `herbs predict`, `herbs heatmap` and `herbs eval --images`.

Files are decoded and transformed in DataLoader worker processes with the same code the shard
loaders use (`herbs.data.transforms`: EXIF orientation, grayscale/CMYK/16-bit to RGB, the eval
resize and centre crop). A file that cannot be read does not stop anything: its batch carries
it in `skipped_keys` and `errors`, and the other images go on.

A batch is a dict like the shard loaders' (`image`, `label`, `key`, `skipped`, `skipped_keys`)
plus `errors` [(position, key, reason)], `index` (positions in the file list) and, when asked
for, `display`: each image resized for drawing, uint8 [H, W, 3] with its own aspect ratio.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import resize as tv_resize

from herbs.data.decode import DEFAULT_MAX_PIXELS, DecodeError
from herbs.data.folder import IMAGE_SUFFIXES, images_in
from herbs.data.stream import make_batch
from herbs.data.transforms import EvalTransform, decode_image, hwc_array
from herbs.data.workers import ignore_signals, worker_context
from herbs.errors import HerbsError


@dataclass(frozen=True)
class ImageInput:
    path: Path
    name: str  # relative to the folder it was found in (or the file's own name): names outputs


def find_images(paths: list[str | Path]) -> list[ImageInput]:
    """Files as given, and every image under each folder (recursive, sorted); one sentence when a path is
    missing or a folder holds no images."""
    if not paths:
        raise HerbsError("no images given; pass image files or folders")
    found: list[ImageInput] = []
    for given in map(Path, paths):
        if given.is_dir():
            images = images_in(given)
            if not images:
                raise HerbsError(f"folder '{given}' holds no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder with images")
            found += [ImageInput(p, str(p.relative_to(given))) for p in images]
        elif given.exists():
            found.append(ImageInput(given, given.name))
        else:
            raise HerbsError(f"'{given}' does not exist; pass existing image files or folders")
    return found


def display_image(image: torch.Tensor, side: int) -> np.ndarray:
    """uint8 [3, H, W] -> uint8 [h, w, 3] with the same aspect ratio and its longer side `side` pixels."""
    _, h, w = image.shape
    scale = side / max(h, w)
    if scale != 1.0:
        image = tv_resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    return hwc_array(image)


class ImageFiles(Dataset):
    """Decode + eval transform of each file; `labels` for evaluation (-1 when unlabelled)."""

    def __init__(self, paths: list[Path], transform: EvalTransform, *, keys: Optional[list[str]] = None,
                 labels: Optional[list[int]] = None, display: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.transform, self.display, self.max_pixels = list(paths), transform, display, max_pixels
        self.keys = keys if keys is not None else [str(p) for p in self.paths]
        self.labels = labels if labels is not None else [-1] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "key": self.keys[index], "label": self.labels[index]}
        try:
            image = decode_image(self.paths[index].read_bytes(), self.transform.resize, self.max_pixels)
        except OSError as err:
            return {**item, "error": f"cannot be read ({err.strerror or err})"}
        except DecodeError as err:
            return {**item, "error": f"is not a readable image: {err}"}
        item["image"] = self.transform(image)
        if self.display:
            item["display"] = display_image(image, self.display)
        return item


def collate(items: list[dict], crop: int) -> dict:
    good = [item for item in items if "error" not in item]
    batch = make_batch([i["image"] for i in good], [i["label"] for i in good], [i["key"] for i in good],
                       [i["key"] for i in items if "error" in i], crop)
    batch["index"] = [i["index"] for i in good]
    batch["errors"] = [(i["index"], i["key"], i["error"]) for i in items if "error" in i]
    if any("display" in i for i in good):
        batch["display"] = [i["display"] for i in good]
    return batch


def image_batches(dataset: ImageFiles, *, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches in file order; decoding in `workers` processes (0: in this one)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      multiprocessing_context=worker_context(workers, preload=(__name__,)), worker_init_fn=ignore_signals,
                      collate_fn=functools.partial(collate, crop=dataset.transform.crop))
