"""Evaluation metrics against hand computations, against the original code's evaluation of its
fixture, and the files of a report."""

from __future__ import annotations

import csv
import json
import random

import pytest
from PIL import Image

from herbs.data.manifest import Manifest
from herbs.data.source import ClassGroup
from herbs.errors import HerbsError
from herbs.evaluate.report import hierarchy_groups, write_report
from herbs.metrics import confusion_matrix, group_metrics, per_class, topk_accuracy
from herbs.predictions import Predictions

NAMES = ["a_X", "b_X", "c_X", "d_Y", "e_Y", "f"]
GROUPS = [ClassGroup("X", (0, 1, 2)), ClassGroup("Y", (3, 4))]  # class 5 is in no group: a group of its own
# (label, ensemble top-5, comb_outs top-5); the other heads are left out
SAMPLES = [
    (0, [0, 1, 2, 3, 4], [1, 0, 2, 3, 4]),  # right
    (0, [1, 0, 2, 3, 4], [0, 1, 2, 3, 4]),  # wrong, inside X
    (1, [3, 1, 0, 2, 4], [1, 3, 0, 2, 4]),  # wrong, outside X (in Y)
    (2, [2, 0, 1, 3, 4], [2, 0, 1, 3, 4]),  # right
    (3, [4, 3, 0, 1, 2], [3, 4, 0, 1, 2]),  # wrong, inside Y
    (4, [4, 3, 0, 1, 2], [0, 1, 2, 3, 5]),  # right
    (5, [0, 1, 2, 3, 4], [5, 0, 1, 2, 3]),  # wrong, outside (f is alone); top-5 misses it
    (3, [5, 3, 0, 1, 2], [0, 1, 2, 4, 5]),  # wrong, outside Y
]


def hand_made() -> Predictions:
    preds = Predictions()
    for i, (label, ens, comb) in enumerate(SAMPLES):
        preds.keys.append(f"s{i}")
        preds.labels.append(label)
        preds.topk.setdefault("ensemble", []).append(ens)
        preds.topk.setdefault("comb_outs", []).append(comb)
        preds.scores.append([(9.0 - j) / 9 for j in range(5)])  # mean probabilities of the nine heads
    return preds


def test_topk_accuracy_per_head_equals_hand_computation():
    m = topk_accuracy(hand_made())
    # ensemble: top-1 right for s0 s3 s5; top-3 misses only s6; top-5 misses only s6
    assert m["ensemble_top1"] == 100 * 3 / 8 and m["ensemble_top3"] == 100 * 7 / 8 and m["ensemble_top5"] == 100 * 7 / 8
    # comb_outs: top-1 right for s1 s2 s3 s4 s6; top-3 and top-5 both miss s5 (no 4) and s7 (no 3)
    assert m["comb_outs_top1"] == 100 * 5 / 8 and m["comb_outs_top3"] == 100 * 6 / 8 and m["comb_outs_top5"] == 100 * 6 / 8


def test_group_accuracy_and_outer_errors_equal_hand_computation():
    g = group_metrics(hand_made(), GROUPS, NAMES)
    rows = {row["name"]: row for row in g["groups"]}
    assert list(rows) == ["X", "Y", "f"]
    x, y, f = rows["X"], rows["Y"], rows["f"]
    # X: s0 s1 s2 s3; right s0 s3; errors s1 (inside) s2 (outside)
    assert (x["samples"], x["correct"], x["errors"], x["outer_errors"]) == (4, 2, 2, 1)
    assert (x["top1"], x["outer_error_rate"], x["outer_share"], x["group_top1"]) == (50.0, 25.0, 50.0, 75.0)
    # Y: s4 s5 s7; right s5; errors s4 (inside) s7 (outside, to f)
    assert (y["samples"], y["correct"], y["errors"], y["outer_errors"]) == (3, 1, 2, 1)
    assert y["top1"] == pytest.approx(100 / 3) and y["outer_share"] == 50.0 and y["group_top1"] == pytest.approx(200 / 3)
    # f alone: s6, wrong, and any error of a one-class group is outer
    assert (f["samples"], f["correct"], f["outer_errors"], f["outer_error_rate"]) == (1, 0, 1, 100.0)
    total = g["total"]
    assert (total["samples"], total["correct"], total["errors"], total["outer_errors"]) == (8, 3, 5, 3)
    assert (total["outer_error_rate"], total["outer_share"], total["group_top1"]) == (37.5, 60.0, 62.5)
    # On another head the same definitions give its own numbers: comb_outs errs on s0 (to b, inside X),
    # s5 (e->a, outside Y) and s7 (d->a, outside Y)
    comb = {row["name"]: row for row in group_metrics(hand_made(), GROUPS, NAMES, head="comb_outs")["groups"]}
    assert (comb["X"]["outer_errors"], comb["Y"]["outer_errors"], comb["f"]["correct"]) == (0, 2, 1)


def test_per_class_accuracy_and_confusion_matrix_equal_hand_computation():
    preds = hand_made()
    matrix = confusion_matrix(preds, len(NAMES))
    assert matrix.sum() == 8 and matrix.trace() == 3
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 3] == 1 and matrix[3, 4] == 1 and matrix[3, 5] == 1 and matrix[5, 0] == 1
    rows = per_class(preds, NAMES)
    assert [(r["samples"], r["correct"]) for r in rows] == [(2, 1), (1, 0), (1, 1), (2, 0), (1, 1), (1, 0)]
    assert [r["top1"] for r in rows] == [50.0, 0.0, 100.0, 0.0, 100.0, 0.0]
    assert [r["top5"] for r in rows] == [100.0, 100.0, 100.0, 100.0, 100.0, 0.0]
    # most confused with: a -> b, b -> d, d -> e or f (one each: the lower index), f -> a; none for the perfect c, e
    assert [r["most_confused_with"] for r in rows] == ["b_X", "d_Y", None, "e_Y", None, "a_X"]


def test_merging_rank_parts_gives_the_one_process_result():
    whole = hand_made()
    order = list(range(len(whole)))
    random.Random(0).shuffle(order)
    parts = [Predictions(skipped=1, skipped_keys=["z1"]), Predictions(skipped=2, skipped_keys=["z0", "z2"])]
    for n, i in enumerate(order):  # ranks see interleaved, unordered samples
        part = parts[n % 2]
        part.keys.append(whole.keys[i])
        part.labels.append(whole.labels[i])
        part.scores.append(whole.scores[i])
        for head, rows in whole.topk.items():
            part.topk.setdefault(head, []).append(rows[i])
    merged = Predictions.merge(parts)
    assert merged.keys == whole.keys and merged.topk == whole.topk and merged.labels == whole.labels
    assert merged.skipped == 3 and merged.skipped_keys == ["z0", "z1", "z2"]
    assert topk_accuracy(merged) == topk_accuracy(whole)


def test_per_head_accuracy_equals_the_original_code_on_its_fixture(reference_fixture):
    """The original eval.py's per-head top-1/top-3 on the fixture batch (eval_metrics.json)."""
    expected = reference_fixture.eval_metrics["accs"]
    preds = Predictions()
    preds.add([f"k{i}" for i in range(4)], reference_fixture.labels, reference_fixture.outputs_eval)
    got = topk_accuracy(preds, ks=(1, 3))
    for tap in ("layer1", "layer2", "layer3", "layer4"):
        for prefix in ("", "FPN1_"):
            for k in (1, 3):
                assert got[f"{prefix}{tap}_top{k}"] == pytest.approx(expected[f"{prefix}{tap}-top-{k}"], abs=1e-9)
    for k in (1, 3):
        assert got[f"comb_outs_top{k}"] == pytest.approx(expected[f"combiner-top-{k}"], abs=1e-9)


def tree_manifest(tmp_path) -> Manifest:
    """NABirds-like: classes 10, 11 under species 5, class 12 under 6; 5 and 6 under family 2; 2 under the root 1."""
    tree = {"1": ("Birds", None), "2": ("Ducks", "1"), "5": ("Mallard", "2"), "6": ("Teal", "2"),
            "10": ("Mallard (Male)", "5"), "11": ("Mallard (Female)", "5"), "12": ("Teal (any)", "6")}
    return Manifest(tmp_path, "nabirds", ["Mallard (Male)", "Mallard (Female)", "Teal (any)"], ["10", "11", "12"],
                    [ClassGroup("Mallard", (0, 1)), ClassGroup("Teal", (2,))], {}, tree)


def test_nabirds_groups_at_a_chosen_level(tmp_path):
    manifest = tree_manifest(tmp_path)
    assert hierarchy_groups(manifest, 1) == manifest.hierarchy
    assert hierarchy_groups(manifest, 2) == [ClassGroup("Ducks", (0, 1, 2))]
    assert hierarchy_groups(manifest, 9) == [ClassGroup("Birds", (0, 1, 2))]  # stops at the root
    manifest.tree = {}
    with pytest.raises(HerbsError, match="--group-level 2 needs a class tree"):
        hierarchy_groups(manifest, 2)


def test_report_holds_everything_and_draws_per_group_matrices_beyond_60_classes(tmp_path):
    preds = hand_made()
    report = write_report(tmp_path / "small", preds, NAMES, GROUPS, {"checkpoint": "m", "data": {"name": "hand"}})
    saved = json.loads((tmp_path / "small" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["checkpoint"] == "m" and saved["samples"] == 8 and saved["headline"]["ensemble_top1"] == 37.5
    assert saved["groups"]["total"]["outer_errors"] == 3 and saved["files"]["confusion"] == ["confusion.png"]
    with open(tmp_path / "small" / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == NAMES and rows[0]["top1"] == "50.0000" and rows[5]["most_confused_with"] == "a_X"
    with open(tmp_path / "small" / "predictions.csv") as f:
        first = next(csv.DictReader(f))
    assert first["key"] == "s0" and first["pred_1"] == "a_X" and float(first["score_1"]) == pytest.approx(1.0)

    names = [f"c{i}" for i in range(70)]
    groups = [ClassGroup("first half", tuple(range(35))), ClassGroup("second/half", tuple(range(35, 69)))]  # c69 alone
    many = Predictions(keys=[f"k{i:03d}" for i in range(140)], labels=[i % 70 for i in range(140)],
                       topk={"ensemble": [[(i * 7) % 70, 0, 1, 2, 3] for i in range(140)]}, scores=[[1.0] * 5] * 140)
    report = write_report(tmp_path / "many", many, names, groups, {"data": {"name": "many"}})
    assert report["files"]["confusion"] == ["confusion/first_half.png", "confusion/second_half.png"]
    for name in report["files"]["confusion"]:
        assert Image.open(tmp_path / "many" / name).format == "PNG"


def cycle(n_classes: int) -> Predictions:
    return Predictions(keys=[f"k{i:04d}" for i in range(2 * n_classes)], labels=[i % n_classes for i in range(2 * n_classes)],
                       topk={"ensemble": [[(i * 7) % n_classes, 0, 1, 2, 3] for i in range(2 * n_classes)]}, scores=[[1.0] * 5] * (2 * n_classes))


def test_many_classes_without_groups_get_no_picture_and_a_group_too_large_to_draw_is_left_out(tmp_path):
    """A whole matrix of 1000 classes took 19 GB to draw (10,000 crashed before report.json was written)."""
    names = [f"c{i}" for i in range(250)]
    report = write_report(tmp_path / "r", cycle(250), names, [], {"data": {"name": "many"}})
    assert report["files"]["confusion"] == [] and not (tmp_path / "r" / "confusion.png").exists()
    assert report["confusion_note"] == "no confusion picture: 250 classes are too many for one (at most 60); --groups draws one per group"
    groups = [ClassGroup("huge", tuple(range(240))), ClassGroup("small", tuple(range(240, 250)))]
    report = write_report(tmp_path / "g", cycle(250), names, groups, {"data": {"name": "many"}})
    assert report["files"]["confusion"] == ["confusion/small.png"]
    assert report["confusion_note"] == "group 'huge' has 240 classes, too many for a picture (at most 200), and has none"
    assert json.loads((tmp_path / "g" / "report.json").read_text())["confusion_note"] == report["confusion_note"]


def test_a_report_written_over_an_earlier_one_leaves_none_of_its_pictures(tmp_path):
    names = [f"c{i}" for i in range(70)]
    groups = [ClassGroup("first", tuple(range(35))), ClassGroup("second", tuple(range(35, 70)))]
    write_report(tmp_path, cycle(70), names, groups, {"data": {"name": "many"}})
    assert (tmp_path / "confusion" / "first.png").is_file()
    (tmp_path / "notes.txt").write_text("mine")
    report = write_report(tmp_path, cycle(70), names, [], {"data": {"name": "many"}})
    assert report["files"]["confusion"] == [] and not (tmp_path / "confusion").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "per_class.csv", "predictions.csv", "report.json"]


def test_suffix_groups_take_the_last_word_after_an_underscore_or_a_space():
    from herbs.data.source import suffix_groups

    groups = suffix_groups(["Yellow Warbler", "Pine Warbler", "Black_footed_Albatross", "Laysan_Albatross", "Hawk"])
    assert groups == [ClassGroup("Albatross", (2, 3)), ClassGroup("Hawk", (4,)), ClassGroup("Warbler", (0, 1))]
