"""Accuracy of every head and of the nine-head ensemble (HERBS_SPEC.md §7), in percent; accuracy
within groups of look-alike classes and the errors that leave the group; per-class accuracy and the
confusion matrix."""

from __future__ import annotations

import numpy as np

from herbs.data.source import ClassGroup
from herbs.predictions import ENSEMBLE, Predictions


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


# --- Class groups, per-class accuracy and the confusion matrix (all on one head, the ensemble by default) ---


def group_of_class(groups: list[ClassGroup], num_classes: int) -> list[int]:
    """The group index of every class. A class no group lists is a group of its own (appended after
    `groups`, named after nothing: callers name it); a class listed twice belongs to its first group."""
    owner = [-1] * num_classes
    for index, group in enumerate(groups):
        for c in group.classes:
            if 0 <= c < num_classes and owner[c] < 0:
                owner[c] = index
    extra = len(groups)
    for c in range(num_classes):
        if owner[c] < 0:
            owner[c], extra = extra, extra + 1
    return owner


def complete_groups(groups: list[ClassGroup], class_names: list[str]) -> list[ClassGroup]:
    """`groups` plus a one-class group for every class they leave out, in the order `group_of_class` numbers them."""
    owner = group_of_class(groups, len(class_names))
    singles = [ClassGroup(class_names[c], (c,)) for c in range(len(class_names)) if owner[c] >= len(groups)]
    return list(groups) + singles


def percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def group_metrics(preds: Predictions, groups: list[ClassGroup], class_names: list[str], head: str = ENSEMBLE) -> dict:
    """Accuracy within each group of look-alike classes, and its "outer errors": top-1 predictions that fall
    outside the true class's group. Every class without a group counts as a group of its own.

    Per group: samples, correct, top1 (% of the group's samples), errors, outer_errors, outer_error_rate
    (% of the group's samples), outer_share (% of the group's errors that are outer) and group_top1 (% whose
    prediction is in the right group). The totals say the same over all samples."""
    groups = complete_groups(groups, class_names)
    owner = group_of_class(groups, len(class_names))
    rows = [dict(name=g.name, classes=len(g.classes), samples=0, correct=0, errors=0, outer_errors=0) for g in groups]
    for label, top in zip(preds.labels, preds.topk[head]):
        row = rows[owner[label]]
        row["samples"] += 1
        if top[0] == label:
            row["correct"] += 1
        else:
            row["errors"] += 1
            row["outer_errors"] += owner[top[0]] != owner[label]
    for row in rows:
        finish_group_row(row)
    total = dict(name="all", classes=len(class_names), **{k: sum(r[k] for r in rows) for k in ("samples", "correct", "errors", "outer_errors")})
    finish_group_row(total)
    return {"head": head, "groups": rows, "total": total}


def finish_group_row(row: dict) -> None:
    n, errors, outer = row["samples"], row["errors"], row["outer_errors"]
    row.update(top1=percent(row["correct"], n), outer_error_rate=percent(outer, n), outer_share=percent(outer, errors),
               group_top1=percent(n - outer, n))


def per_class(preds: Predictions, class_names: list[str], head: str = ENSEMBLE) -> list[dict]:
    """Per class: samples, top-1 and top-5 accuracy (None without samples), and the class it is most often
    mistaken for (top-1, with how often)."""
    k = len(class_names)
    samples, top1, top5 = [0] * k, [0] * k, [0] * k
    matrix = confusion_matrix(preds, k, head)
    for label, top in zip(preds.labels, preds.topk[head]):
        samples[label] += 1
        top1[label] += top[0] == label
        top5[label] += label in top[:5]
    rows = []
    for c, name in enumerate(class_names):
        wrong = matrix[c].copy()
        wrong[c] = 0
        confused = int(wrong.argmax()) if wrong.any() else None
        rows.append(dict(index=c, name=name, samples=samples[c], correct=top1[c], top1=percent(top1[c], samples[c]),
                         top5=percent(top5[c], samples[c]),
                         most_confused_with=class_names[confused] if confused is not None else None,
                         confused_count=int(wrong[confused]) if confused is not None else 0))
    return rows


def confusion_matrix(preds: Predictions, num_classes: int, head: str = ENSEMBLE) -> np.ndarray:
    """Counts [true class, top-1 predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for label, top in zip(preds.labels, preds.topk.get(head, [])):
        matrix[label, top[0]] += 1
    return matrix
