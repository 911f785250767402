"""Accuracy of every head and of the nine-head ensemble (HERBS_SPEC.md §7), in percent."""

from __future__ import annotations

from herbs.evaluate.predictions import ENSEMBLE, Predictions


def topk_accuracy(preds: Predictions, ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, float]:
    """`{head}_top{k}` for every head and k; the ensemble's top-1 is the published number."""
    if not len(preds):
        return {}
    out = {}
    for head, rows in preds.topk.items():
        for k in ks:
            if k > len(rows[0]):
                continue
            hits = sum(label in row[:k] for label, row in zip(preds.labels, rows))
            out[f"{head}_top{k}"] = 100.0 * hits / len(preds)
    return out


def headline(metrics: dict[str, float]) -> float:
    return metrics.get(f"{ENSEMBLE}_top1", 0.0)
