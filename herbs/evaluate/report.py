"""What `herbs eval` writes: report.json, per_class.csv, predictions.csv and the confusion picture(s).

report.json holds every number (top-1/3/5 of each head and of the ensemble, group accuracy and
outer errors, per-class accuracy), where they came from (checkpoint, data, sample count, what was
skipped) and the names of the other files. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from herbs.atomic import write_atomic
from herbs.data.manifest import Manifest
from herbs.data.source import ClassGroup, suffix_groups
from herbs.errors import HerbsError
from herbs.evaluate.plots import CONFUSION, plot_confusion
from herbs.metrics import complete_groups, confusion_matrix, group_metrics, headline, per_class, topk_accuracy
from herbs.predictions import ENSEMBLE, Predictions

GROUPINGS = ("auto", "manifest", "suffix", "none")


def hierarchy_groups(manifest: Manifest, level: int) -> list[ClassGroup]:
    """The manifest's class groups (level 1: each class's parent, as the shards were written), or for a
    dataset with a class tree (NABirds) the ancestors `level` steps up (a node without a parent stays)."""
    if level < 1:
        raise HerbsError(f"--group-level must be 1 or more (1 = each class's parent), got {level}")
    if level == 1:
        return list(manifest.hierarchy)
    if not manifest.tree:
        raise HerbsError(
            f"--group-level {level} needs a class tree, and the {manifest.dataset} shards in {manifest.root} have none "
            "(only NABirds has one); use --group-level 1"
        )
    members: dict[str, list[int]] = {}
    for index, node in enumerate(manifest.original_ids):
        for _ in range(level):
            parent = manifest.tree.get(node, (node, None))[1]
            if parent is None:
                break
            node = parent
        members.setdefault(node, []).append(index)
    return [ClassGroup(manifest.tree.get(node, (node, None))[0], tuple(m)) for node, m in members.items()]


def choose_groups(how: str, class_names: list[str], manifest: Optional[Manifest], level: Optional[int]) -> tuple[list[ClassGroup], str]:
    """(groups, how they were made) for --groups auto|manifest|suffix|none and --group-level (None: 1)."""
    if how not in GROUPINGS:
        raise HerbsError(f"--groups must be one of {', '.join(GROUPINGS)}, got '{how}'")
    if level is not None and how in ("suffix", "none"):
        raise HerbsError(f"--group-level chooses a level of the manifest's class groups, and --groups {how} makes none; "
                         "leave --group-level out, or use --groups manifest")
    if level is not None and manifest is None:
        raise HerbsError("--group-level chooses a level of the manifest's class groups, and an image folder has none; "
                         "leave --group-level out with --images")
    level = level or 1
    if how == "none" or (how == "auto" and manifest is None):
        return [], "none"
    if how == "suffix":
        return suffix_groups(class_names), "suffix: the last word of each class name"
    if manifest is None:
        raise HerbsError("--groups manifest needs --shards (an image folder has no class hierarchy); use --groups suffix or none")
    groups = hierarchy_groups(manifest, level)
    if not groups:
        return [], "none (the manifest lists no class groups)"
    return groups, f"manifest hierarchy, level {level}"


def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def build_report(preds: Predictions, class_names: list[str], groups: list[ClassGroup], info: dict) -> dict:
    metrics = topk_accuracy(preds)
    return {
        **info,
        "samples": len(preds),
        "skipped": preds.skipped,
        "skipped_keys": preds.skipped_keys,
        "num_classes": len(class_names),
        "headline": {"ensemble_top1": headline(metrics) if len(preds) else None},
        "metrics": metrics,
        "groups": group_metrics(preds, groups, class_names) if groups and len(preds) else None,
        "per_class": per_class(preds, class_names),
    }


REPORT_FILE = "report.json"
WRITTEN = (REPORT_FILE, "per_class.csv", "predictions.csv", f"{CONFUSION}.png", CONFUSION)  # what write_report may put in its folder


def check_report_folder(out_dir: Path, option: str, data: Optional[dict] = None) -> None:
    """One sentence when a report written into `out_dir` would replace a file that no earlier report put there,
    or, given the `data` this one evaluates, an earlier report of other data (for a folder the user did not name)."""
    try:
        earlier = json.loads((out_dir / REPORT_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and {"files", "metrics"} <= earlier.keys():  # an earlier report's folder: replaced
        if data is not None and earlier.get("data") != data:
            was = earlier.get("data") if isinstance(earlier.get("data"), dict) else {}
            what = f"{was['shards']}, split {was.get('split')}" if "shards" in was else was.get("images", "other data")
            raise HerbsError(f"'{out_dir}' holds the report of another evaluation ({what}), which this one would replace; "
                             f"pass {option} for this one")
        return
    taken = [name for name in WRITTEN if (out_dir / name).exists()]
    if taken:
        raise HerbsError(f"'{out_dir}' holds {taken[0]}, which a report written there would replace and which no earlier "
                         f"herbs eval wrote; pass a new or empty folder, or an earlier report's, as {option}")


def write_report(out_dir: Path, preds: Predictions, class_names: list[str], groups: list[ClassGroup], info: dict) -> dict:
    """Write every file of an evaluation into `out_dir` (checked with `check_report_folder`); returns the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(preds, class_names, groups, info)
    files = {"report": REPORT_FILE, "per_class": "per_class.csv", "predictions": "predictions.csv"}
    write_atomic(out_dir / files["per_class"], csv_text(
        ["index", "class", "samples", "correct", "top1", "top5", "most_confused_with", "confused_count"],
        [[r["index"], r["name"], r["samples"], r["correct"], fmt(r["top1"]), fmt(r["top5"]), r["most_confused_with"] or "", r["confused_count"]]
         for r in report["per_class"]]))
    k = len(preds.scores[0]) if len(preds) else 0
    write_atomic(out_dir / files["predictions"], csv_text(
        ["key", "label", "class", *[f"{f}_{i}" for i in range(1, k + 1) for f in ("pred", "score")]],
        [[key, label, class_names[label], *[v for c, s in zip(top, scores) for v in (class_names[c], f"{s:.6f}")]]
         for key, label, top, scores in zip(preds.keys, preds.labels, preds.topk.get(ENSEMBLE, []), preds.scores)]))
    earlier = earlier_pictures(out_dir)
    report["files"] = files
    write_atomic(out_dir / files["report"], json.dumps(report, indent=1) + "\n")  # the numbers first: drawing may fail
    for picture in earlier:  # an earlier report's, which this one replaces: none of them may stay beside it
        picture.unlink(missing_ok=True)
    if (out_dir / CONFUSION).is_dir() and not any((out_dir / CONFUSION).iterdir()):
        (out_dir / CONFUSION).rmdir()
    if len(preds):
        matrix = confusion_matrix(preds, len(class_names))
        title = f"{info.get('data', {}).get('name', 'evaluation')}: ensemble top-1 {report['headline']['ensemble_top1']:.2f}% ({len(preds)} images)"
        pictures, report["confusion_note"] = plot_confusion(matrix, class_names, complete_groups(groups, class_names) if groups else [],
                                                            out_dir, title)
        files["confusion"] = [str(p.relative_to(out_dir)) for p in pictures]
        write_atomic(out_dir / files["report"], json.dumps(report, indent=1) + "\n")
    return report


def earlier_pictures(out_dir: Path) -> list[Path]:
    """The confusion pictures an earlier report in `out_dir` lists (`check_report_folder` let it be replaced)."""
    try:
        listed = json.loads((out_dir / REPORT_FILE).read_text())["files"]["confusion"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return []
    return [out_dir / name for name in listed
            if isinstance(name, str) and Path(name).parts[:1] in ((f"{CONFUSION}.png",), (CONFUSION,)) and ".." not in Path(name).parts]
