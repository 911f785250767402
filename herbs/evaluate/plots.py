"""Confusion-matrix pictures (matplotlib, no display needed).

Up to `WHOLE_MATRIX_MAX` classes: one picture of the whole matrix. Beyond that a whole matrix is
unreadable, so there is one picture per class group (of two classes or more, with samples): the
group's classes against each other plus a last column "outside" counting the outer errors. A
group of more than `GROUP_MAX` classes has none: drawing 1000 classes took 19 GB.
Cells show the fraction of the true class's samples (rows sum to 1); counts are written in the
cells when there are at most 25 columns.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from herbs.data.source import ClassGroup  # noqa: E402

WHOLE_MATRIX_MAX = 60
GROUP_MAX = 200
ANNOTATE_MAX = 25


def plot_matrix(counts: np.ndarray, rows: list[str], columns: list[str], path: Path, title: str) -> Path:
    """`counts` [len(rows), len(columns)]: true classes down, predictions across."""
    totals = counts.sum(1, keepdims=True)
    fraction = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = max(4.0, 0.22 * max(len(rows), len(columns)) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    font = max(4, min(9, int(400 / max(len(rows), len(columns), 1))))
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=font)
    ax.set_yticks(range(len(rows)), rows, fontsize=font)
    ax.set_xlabel("predicted (ensemble top-1)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if len(columns) <= ANNOTATE_MAX:
        for (r, c), n in np.ndenumerate(counts):
            if n:
                ax.text(c, r, str(n), ha="center", va="center", fontsize=font, color="white" if fraction[r, c] > 0.5 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "group"


CONFUSION = "confusion"  # confusion.png, or the folder confusion/ of one picture per group


def plot_confusion(matrix: np.ndarray, class_names: list[str], groups: list[ClassGroup], out_dir: Path,
                   title: str) -> tuple[list[Path], str | None]:
    """The whole matrix as `confusion.png`, or one `confusion/<group>.png` per group for many classes; and a
    sentence on what could not be drawn."""
    if len(class_names) <= WHOLE_MATRIX_MAX:
        return [plot_matrix(matrix, class_names, class_names, out_dir / f"{CONFUSION}.png", title)], None
    if not groups:
        return [], (f"no confusion picture: {len(class_names)} classes are too many for one (at most {WHOLE_MATRIX_MAX}); "
                    "--groups draws one per group")
    written, used, too_large = [], set(), []
    for group in groups:
        members = list(group.classes)
        if len(members) < 2 or not matrix[members].sum():
            continue
        if len(members) > GROUP_MAX:
            too_large.append(group)
            continue
        inside = matrix[np.ix_(members, members)]
        outside = matrix[members].sum(1, keepdims=True) - inside.sum(1, keepdims=True)
        name = safe_name(group.name)
        while name in used:
            name += "_"
        used.add(name)
        names = [class_names[c] for c in members]
        written.append(plot_matrix(np.concatenate([inside, outside], 1), names, names + ["outside"],
                                   out_dir / CONFUSION / f"{name}.png", f"{title}: {group.name}"))
    if not too_large:
        return written, None
    more = f" (and {len(too_large) - 1} more)" if len(too_large) > 1 else ""
    return written, (f"group '{too_large[0].name}'{more} has {len(too_large[0].classes)} classes, too many for a picture "
                     f"(at most {GROUP_MAX}), and has none")
