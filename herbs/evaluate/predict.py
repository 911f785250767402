"""Top-k classes of the nine-head ensemble for image files, streamed as CSV or JSON lines.

The score of a class is the mean of the nine heads' softmax probabilities (the ensemble score of
HERBS_SPEC.md §7 divided by 9; a linear head's own probability), so a row's scores lie in 0..1 and
all classes' scores sum to 1.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional, Union

import torch

from herbs.data.transforms import EvalTransform, normalize
from herbs.errors import HerbsError
from herbs.evaluate.images import ImageFiles, ImageInput, image_batches
from herbs.evaluate.inference import InferenceModel, autocast, writable_dir
from herbs.model.herbs_model import ensemble_probabilities

FORMATS = ("csv", "jsonl")


@dataclass
class Prediction:
    key: str  # the image's path
    classes: list[str]  # best first
    indices: list[int]
    scores: list[float]


@dataclass
class Unreadable:
    key: str
    reason: str


def check_output(output: Path, inputs: list, fmt: str | None) -> None:
    """One sentence, before any image is read, for an --output that the predictions cannot go to, or would replace
    something they must not."""
    if output.is_dir():
        raise HerbsError(f"--output '{output}' is a folder; name the file to write, e.g. {output / 'predictions.csv'}")
    if output.exists() and any(i.path.exists() and output.samefile(i.path) for i in inputs):  # a dangling link is only named
        raise HerbsError(f"--output '{output}' is one of the input images, which the predictions would replace; name another file")
    writable_dir(output.parent, "--output")  # a model directory's files go with its next save
    if output.suffix.lower() == ".json" and fmt is None:
        raise HerbsError(f"--output '{output}' ends in .json, but predictions are one JSON object per line; "
                         "name it .jsonl, or pass --format jsonl or csv")


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores)


def eval_transform(inference: InferenceModel, crop: Optional[int] = None) -> EvalTransform:
    """The model's evaluation transform; `crop` other than model.img_size (test-time augmentation cuts its own)."""
    return EvalTransform(inference.config.data.resize, crop or inference.config.model.img_size)


def predict_images(inference: InferenceModel, inputs: list[ImageInput], *, topk: int = 5, batch_size: int = 16,
                   workers: int = 0, precision: str = "no") -> Iterator[Union[Prediction, Unreadable]]:
    """One result per input, in input order: its top-k classes, or why it could not be read."""
    dataset = ImageFiles([i.path for i in inputs], eval_transform(inference), max_pixels=inference.config.data.max_image_pixels)
    k = min(topk, inference.num_classes)
    data, device = inference.config.data, inference.device
    for batch in image_batches(dataset, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda"):
        results: dict[int, Union[Prediction, Unreadable]] = {i: Unreadable(key, why) for i, key, why in batch["errors"]}
        if batch["key"]:
            images = normalize(batch["image"].to(device, non_blocking=True), data.mean, data.std)
            with torch.inference_mode(), autocast(device, precision):
                probs = ensemble_probabilities(inference.model(images))
            top = probs.float().topk(k, dim=-1)
            for index, key, idx, val in zip(batch["index"], batch["key"], top.indices.tolist(), top.values.tolist()):
                results[index] = Prediction(key, [inference.class_names[c] for c in idx], idx, val)
        for index in sorted(results):
            yield results[index]


class PredictionWriter:
    """Rows to a text stream: CSV (path, class_1, score_1, ..., class_k, score_k) or JSON lines
    ({"path": ..., "top": [{"class": ..., "index": ..., "score": ...}, ...]}); flushed per batch of rows."""

    def __init__(self, stream: IO[str], fmt: str, topk: int):
        self.stream, self.fmt = stream, fmt
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(["path", *[f"{field}_{i}" for i in range(1, topk + 1) for field in ("class", "score")]])

    def write(self, p: Prediction) -> None:
        if self.fmt == "csv":
            self.csv.writerow([p.key, *[v for name, score in zip(p.classes, p.scores) for v in (name, f"{score:.6f}")]])
        else:
            top = [{"class": n, "index": i, "score": round(s, 6)} for n, i, s in zip(p.classes, p.indices, p.scores)]
            self.stream.write(json.dumps({"path": p.key, "top": top}) + "\n")

    def flush(self) -> None:
        self.stream.flush()
