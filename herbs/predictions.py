"""Run a model over evaluation batches and keep, per sample, the top-k classes of every head.

Training's validation and `herbs eval` both predict with it, so the two report the same numbers.
Each rank collects its own samples; `gather` merges all ranks' records once at the end and
de-duplicates them by key, so the result is exactly what one process would have computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from herbs.data.transforms import normalize
from herbs.model.herbs_model import head_logits

ENSEMBLE = "ensemble"
TOP_K = 5


@dataclass
class Predictions:
    """Per-sample results, in key order after `gather`."""

    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    topk: dict[str, list[list[int]]] = field(default_factory=dict)  # head -> per sample, best class first
    # The mean of the heads' probabilities (0..1) for each topk["ensemble"] class.
    scores: list[list[float]] = field(default_factory=list)
    skipped: int = 0  # samples that could not be decoded or had a bad label
    skipped_keys: list[str] = field(default_factory=list)  # which ones, where the loader names them (image folders)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: list[str], labels: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        heads = {name: logits.float() for name, logits in head_logits(outputs).items()}
        self.keep(keys, labels, heads, sum(logits.softmax(-1) for logits in heads.values()))

    def add_views(self, keys: list[str], labels: torch.Tensor, views: list[dict[str, torch.Tensor]]) -> None:
        """Several views of the same images (test-time augmentation): each head's probabilities
        averaged over the views, the ensemble their sum (the mean of the views' ensembles)."""
        per_view = [head_logits(outputs) for outputs in views]
        heads = {name: sum(view[name].float().softmax(-1) for view in per_view) / len(per_view) for name in per_view[0]}
        self.keep(keys, labels, heads, sum(heads.values()))

    def keep(self, keys: list[str], labels: torch.Tensor, heads: dict[str, torch.Tensor], ensemble: torch.Tensor) -> None:
        """Each head's top-k (by its logits or probabilities: the same order) and the ensemble's scores."""
        count = len(heads)
        heads[ENSEMBLE] = ensemble
        k = min(TOP_K, ensemble.size(-1))
        for name, logits in heads.items():
            self.topk.setdefault(name, []).extend(logits.topk(k, dim=-1).indices.tolist())
        self.scores.extend((ensemble.topk(k, dim=-1).values / count).tolist())
        self.keys.extend(keys)
        self.labels.extend(labels.tolist())

    @classmethod
    def merge(cls, parts: list["Predictions"]) -> "Predictions":
        """One record per key (ranks never share samples, but a repeated key is kept once), sorted by key."""
        rows = {}
        for part in parts:
            for i, key in enumerate(part.keys):
                rows.setdefault(key, (part, i))
        merged = cls(skipped=sum(p.skipped for p in parts), skipped_keys=sorted(k for p in parts for k in p.skipped_keys))
        for key in sorted(rows):
            part, i = rows[key]
            merged.keys.append(key)
            merged.labels.append(part.labels[i])
            merged.scores.append(part.scores[i])
            for name, values in part.topk.items():
                merged.topk.setdefault(name, []).append(values[i])
        return merged


@dataclass
class Views:
    """Test-time augmentation: `make` cuts a batch into views, the plain (centre-crop) view first;
    `predictions` collects what all of them predict together (`Predictions.add_views`)."""

    name: str
    count: int  # views per image
    make: Callable[[torch.Tensor], list[torch.Tensor]]
    predictions: Predictions = field(default_factory=Predictions)


@torch.no_grad()
def predict_batches(model, batches, device, mean, std, forwards: int | None = None, crop: int | None = None,
                    views: Optional[Views] = None) -> Predictions:
    """This process's predictions for an iterable of batches (dicts with image, label, key, skipped,
    and optionally skipped_keys). `forwards`: make exactly this many forward passes, one per batch
    (an empty one included) and the rest on a blank `crop`-sized image, as ZeRO-3's per-layer
    collectives need when ranks hold different numbers of batches. With `views` the batches hold
    uncropped images: the plain predictions come from the first view, `views.predictions` from all."""
    was_training = model.training
    model.eval()
    result = Predictions()
    made = 0
    blank = None if forwards is None else torch.zeros(1, 3, crop, crop, device=device)
    for batch in batches:
        result.skipped += int(batch["skipped"])
        result.skipped_keys.extend(batch.get("skipped_keys", ()))
        if not len(batch["key"]):
            if blank is not None:
                model(blank)
                made += 1
            continue
        images = normalize(batch["image"].to(device, non_blocking=True), mean, std)
        outputs = [model(view) for view in (views.make(images) if views else [images])]
        result.add(batch["key"], batch["label"], outputs[0])
        if views:
            views.predictions.add_views(batch["key"], batch["label"], outputs)
        made += 1
    while blank is not None and made < forwards:
        model(blank)
        made += 1
    if views:
        views.predictions.skipped, views.predictions.skipped_keys = result.skipped, list(result.skipped_keys)
    model.train(was_training)
    return result


def gather(local: Predictions, accelerator=None) -> Predictions:
    """All ranks' predictions merged on every rank (no-op merge on one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return Predictions.merge([local])
    from accelerate.utils import gather_object

    return Predictions.merge(gather_object([local]))
