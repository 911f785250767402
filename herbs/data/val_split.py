"""Hold out a deterministic, class-stratified part of train as `val`, so that model selection
never looks at the test split."""

from __future__ import annotations

import dataclasses
import random

from herbs.errors import DataError
from herbs.data.source import SourceDataset


def hold_out_val(dataset: SourceDataset, fraction: float, seed: int) -> SourceDataset:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    if "val" in dataset.splits:
        raise DataError("the dataset already has a val split; drop --val-fraction to keep it")
    by_class: dict[int, list[int]] = {}
    for position, sample in enumerate(dataset.splits["train"]):
        by_class.setdefault(sample.label, []).append(position)
    rng = random.Random(seed)
    held = set()
    for label in sorted(by_class):
        positions = by_class[label]
        # At least one per class so every class is validated, but never a class's last training image.
        count = min(max(1, round(fraction * len(positions))), len(positions) - 1)
        held.update(rng.sample(positions, count))
    train = dataset.splits["train"]
    splits = dict(dataset.splits)
    splits["train"] = [s for i, s in enumerate(train) if i not in held]
    splits["val"] = [s for i, s in enumerate(train) if i in held]
    return dataclasses.replace(dataset, splits=splits)
