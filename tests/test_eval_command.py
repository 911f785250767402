"""`herbs eval` end to end: on shards and on image folders, in one and in two processes, on the
model imported from the original code, and every user mistake as one sentence."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from herbs.data.stream import eval_stream
from herbs.metrics import topk_accuracy
from herbs.model.checkpoint import load_model
from herbs.errors import HerbsError
from herbs.evaluate.tta import views as tta_views
from herbs.model.herbs_model import head_logits
from herbs.predictions import ENSEMBLE, Predictions, predict_batches

from helpers.data import bomb_png, rewrite_shard
from test_eval_helpers import DEMO_NAMES, bird, micro_model, one_sentence, run_cli
from helpers import REPO
from helpers.runs import env, free_port, write_demo_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Demo shards (2 test images per class) where test_000007 is an undecodable JPEG."""
    out = write_demo_shards(tmp_path_factory.mktemp("eval") / "shards", train=1, val=1, test=2)
    rewrite_shard(out, "test-000000.tar", {"test_000007": {"jpg": b"\xff\xd8\xff\xe0 broken"}})
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model(tmp_path_factory.mktemp("eval") / "model")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_on_shards_writes_the_report(shards, model_dir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", tmp_path, "--workers", "0")
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checkpoint"] == str(model_dir) and report["data"] == {
        "kind": "shards", "shards": str(shards), "split": "test", "dataset": "demo", "name": "shards/test"}
    assert report["samples"] == 39 and report["skipped"] == 1 and report["skipped_keys"] == ["test_000007"]

    # The same numbers as the training loop's evaluation of the same model on the same split.
    model, config, _ = load_model(model_dir)
    data = dataclasses.replace(config.data, shards=str(shards), num_workers=0)
    direct = predict_batches(model, eval_stream(data, "test", crop=64, rank=0, world_size=1), "cpu", data.mean, data.std)
    assert report["metrics"] == topk_accuracy(direct)
    assert len(report["metrics"]) == 10 * 3  # nine heads and the ensemble, top-1/3/5
    assert report["headline"]["ensemble_top1"] == report["metrics"]["ensemble_top1"]

    # The demo's groups are its four body colours; every sample is in one.
    groups = report["groups"]
    assert report["groups_from"] == "manifest hierarchy, level 1"
    assert [g["name"] for g in groups["groups"]] == ["slate", "olive", "rust", "grey"]
    assert sum(g["samples"] for g in groups["groups"]) == groups["total"]["samples"] == 39
    assert groups["total"]["correct"] == round(report["metrics"]["ensemble_top1"] * 39 / 100)

    per_class = read_csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in per_class] == DEMO_NAMES
    assert sum(int(r["samples"]) for r in per_class) == 39
    predictions = read_csv(tmp_path / "predictions.csv")
    assert [r["key"] for r in predictions] == direct.keys and [r["pred_1"] for r in predictions] == [DEMO_NAMES[t[0]] for t in direct.topk["ensemble"]]
    assert Image.open(tmp_path / "confusion.png").format == "PNG"
    assert f"ensemble top-1 {report['metrics']['ensemble_top1']:.2f}%" in out and "39 images evaluated, 1 skipped" in out


@pytest.mark.multiprocess
def test_two_processes_give_exactly_the_one_process_report(shards, model_dir, tmp_path, capsys):
    assert run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", tmp_path / "one", "--workers", "0")[0] == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "herbs.cli", "eval", "--checkpoint", str(model_dir), "--shards", str(shards), "--out", str(tmp_path / "two"),
              "--workers", "1", "--batch-size", "3"]
    done = subprocess.run(launch, capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two"))
    assert (one.pop("processes"), two.pop("processes")) == (1, 2)
    two["data"]["shards"] = one["data"]["shards"]
    assert one == two  # every metric, group, class and skipped key
    assert (tmp_path / "one" / "per_class.csv").read_text() == (tmp_path / "two" / "per_class.csv").read_text()
    first, second = read_csv(tmp_path / "one" / "predictions.csv"), read_csv(tmp_path / "two" / "predictions.csv")
    assert [{k: v for k, v in r.items() if not k.startswith("score")} for r in first] == \
           [{k: v for k, v in r.items() if not k.startswith("score")} for r in second]
    for a, b in zip(first, second):  # other batches: the same scores up to float rounding
        assert all(abs(float(a[f"score_{i}"]) - float(b[f"score_{i}"])) <= 1e-5 for i in range(1, 6))


def image_folder(root, names=("rust_plain", "slate_wing_bar"), per_class=3):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            bird(name if name in DEMO_NAMES else "grey_plain", i, size=(90, 70)).save(root / name / f"{i}.jpg")
    return root


def test_the_default_report_outlives_the_model_that_training_replaces(shards, tmp_path, capsys):
    """A run's best/ is replaced whole at each new best; an evaluation of the old one must not go with it."""
    best = micro_model(tmp_path / "run" / "best")
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", best, "--shards", shards, "--workers", "0")
    assert code == 0
    report = Path(out.split("wrote ")[-1].split(" (+")[0])
    micro_model(best, seed=1)  # what the training loop's export of a better model does
    assert json.loads(report.read_text())["checkpoint"] == str(best)
    assert run_cli(capsys, "eval", "--checkpoint", best, "--shards", shards, "--workers", "0")[0] == 0  # a rerun replaces it
    other = tmp_path / "other" / shards.name
    shutil.copytree(shards, other)
    before = report.read_text()
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", best, "--shards", other, "--workers", "0")[::2])
    assert line.endswith(f"'{report.parent}' holds the report of another evaluation ({shards}, split test), which this one "
                         f"would replace; pass --out for this one")
    assert report.read_text() == before


def test_eval_on_an_image_folder_matches_names_and_reports_unreadable_files(model_dir, tmp_path, capsys):
    root = image_folder(tmp_path / "photos")
    (root / "rust_plain" / "bad.jpg").write_bytes(b"not an image")
    (root / "slate_wing_bar" / "bomb.png").write_bytes(bomb_png())
    code, _, err = run_cli(capsys, "eval", "--checkpoint", model_dir, "--images", root, "--out", tmp_path / "out", "--workers", "1")
    assert code == 0
    assert "skipped 'rust_plain/bad.jpg': it is not a readable image: 12 bytes with no known image header" in err
    assert "skipped 'slate_wing_bar/bomb.png': it is not a readable image: a 20000x20000 PNG of 400,000,000 pixels" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["kind"] == "images" and report["samples"] == 6
    assert report["skipped_keys"] == ["rust_plain/bad.jpg", "slate_wing_bar/bomb.png"]
    assert report["groups"] is None and report["groups_from"] == "none"
    per_class = {r["class"]: int(r["samples"]) for r in read_csv(tmp_path / "out" / "per_class.csv")}
    assert per_class["rust_plain"] == 3 and per_class["slate_wing_bar"] == 3 and sum(per_class.values()) == 6
    labels = {r["key"]: r["class"] for r in read_csv(tmp_path / "out" / "predictions.csv")}
    assert labels["slate_wing_bar/0.jpg"] == "slate_wing_bar"

    # CUB-style groups from the class names' last word: plain, wing_bar -> "plain", "bar"
    code, _, _ = run_cli(capsys, "eval", "--checkpoint", model_dir, "--images", root, "--out", tmp_path / "s", "--groups", "suffix", "--workers", "0")
    groups = json.loads((tmp_path / "s" / "report.json").read_text())["groups"]
    assert code == 0 and {g["name"]: g["samples"] for g in groups["groups"]}["bar"] == 3


def test_user_mistakes_are_one_sentence(shards, model_dir, tmp_path, capsys):
    renamed = micro_model(tmp_path / "renamed", class_names=DEMO_NAMES[:3] + ["rust_blue_crown"] + DEMO_NAMES[4:])
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", renamed, "--shards", shards, "--out", tmp_path / "x")[::2])
    assert "class 3" in line and "'rust_blue_crown'" in line and f"'{DEMO_NAMES[3]}'" in line

    fewer = micro_model(tmp_path / "fewer", class_names=None)  # 20 unnamed classes fit 20-class shards ...
    assert run_cli(capsys, "eval", "--checkpoint", fewer, "--shards", shards, "--out", tmp_path / "y", "--workers", "0")[0] == 0
    assert json.loads((tmp_path / "y" / "report.json").read_text())["class_names_from"].startswith("manifest")
    assert run_cli(capsys, "eval", "--checkpoint", fewer, "--shards", shards, "--out", tmp_path / "y", "--workers", "0")[0] == 0  # replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "predictions.csv").write_text("the user's own\n")
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", fewer, "--shards", shards, "--out", tmp_path / "mine")[::2])
    assert "predictions.csv" in line and "--out" in line and (tmp_path / "mine" / "predictions.csv").read_text() == "the user's own\n"

    root = image_folder(tmp_path / "unknown", names=("rust_plain", "purple_heron"), per_class=1)
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--images", root)[::2])
    assert "purple_heron" in line and "not a class of the model" in line

    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", model_dir)[::2])
    assert "is a model directory" in line and "--out" in line
    (tmp_path / "empty" / "rust_plain").mkdir(parents=True)
    assert "hold no images" in one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--images", tmp_path / "empty")[::2])
    (tmp_path / "a.jpg").write_bytes(b"")
    assert f"image folder '{tmp_path / 'a.jpg'}' is not a directory;" in one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir,
                                                                                       "--images", tmp_path / "a.jpg")[::2])
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--group-level", "2")[::2])
    assert "needs a class tree" in line
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--images", root, "--split", "val")[::2])
    assert line.endswith("--split chooses a split of --shards, and an image folder has none; leave --split out with --images")
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--groups", "suffix", "--group-level", "2")[::2])
    assert line.endswith("--group-level chooses a level of the manifest's class groups, and --groups suffix makes none; "
                         "leave --group-level out, or use --groups manifest")
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-0000002" / "trainer_state.json").write_text("{}")
    for given in (run_dir, run_dir / "checkpoints" / "step-0000002"):
        line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", given, "--shards", shards)[::2])
        assert line.endswith(f"is a training run's {'directory' if given == run_dir else 'checkpoint'}, not a model; "
                             f"pass the model it exported, {run_dir / 'best'} (or {run_dir / 'ema'})")
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", tmp_path / "nope", "--shards", shards)[::2])
    assert "does not exist" in line
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--split", "holdout", "--out", tmp_path / "h")[::2])
    assert "split 'holdout'" in line and not (tmp_path / "h").exists()
    (tmp_path / "file").write_text("")
    line = one_sentence(*run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", tmp_path / "file" / "out")[::2])
    assert "cannot be written" in line and "--out" in line


def test_reference_model_evaluates_and_predicts_end_to_end(reference_fixture, reference_checkpoint, tmp_path, capsys):
    """The original code's checkpoint, imported: it names no classes, so folders are class_0, class_1, ..."""
    model = tmp_path / "reference"
    code, _, err = run_cli(capsys, "import-checkpoint", reference_checkpoint, "--config", reference_fixture.config, "--out", model)
    assert code == 0, err
    root = tmp_path / "photos"
    for label, name in ((0, "rust_plain"), (7, "grey_red_crown")):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(2):
            bird(name, i, size=(300, 240)).save(root / f"class_{label}" / f"{i}.jpg")
    code, out, err = run_cli(capsys, "eval", "--checkpoint", model, "--images", root, "--out", tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 4 and report["class_names_from"] == "generic" and report["model"]["img_size"] == 224
    assert [r["name"] for r in report["per_class"]][:2] == ["class_0", "class_1"] and "ensemble_top1" in report["metrics"]

    code, out, err = run_cli(capsys, "predict", "--checkpoint", model, root, "--workers", "0", "--topk", "3")
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    assert len(rows) == 4 and all(r["class_1"].startswith("class_") for r in rows)
    assert [r["path"] for r in rows] == [str(root / f"class_{c}" / f"{i}.jpg") for c in (0, 7) for i in range(2)]


def test_tta_reports_beside_the_plain_numbers_which_stay_as_they_were(shards, model_dir, tmp_path, capsys):
    plain = run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", tmp_path / "plain", "--workers", "0")
    assert plain[0] == 0
    want = json.loads((tmp_path / "plain" / "report.json").read_text())
    for kind, count in (("flip", 2), ("flip+crops", 6)):
        code, out, err = run_cli(capsys, "eval", "--checkpoint", model_dir, "--shards", shards, "--out", tmp_path / kind, "--workers", "0",
                                 "--tta", kind)
        assert code == 0, err
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert report["metrics"] == want["metrics"] and report["samples"] == want["samples"] == 39  # the centre view is the plain one
        assert report["tta"]["views"] == kind and report["tta"]["count"] == count
        assert set(report["tta"]["metrics"]) == set(want["metrics"])
        assert report["tta"]["headline"]["ensemble_top1"] == report["tta"]["metrics"]["ensemble_top1"]
        assert f"with --tta {kind} ({count} views): ensemble top-1 {report['tta']['metrics']['ensemble_top1']:.2f}%" in out
    assert "tta" not in want


def test_corner_crops_of_an_image_no_larger_than_the_crop_are_refused():
    with pytest.raises(HerbsError, match="every corner is the centre; use --tta flip"):
        tta_views("flip+crops", 224, 224)
    assert tta_views("flip", 224, 224).count == 2


def test_tta_averages_the_ensemble_over_the_mirror_image(model_dir):
    """flip: each head's probabilities are the mean of the image's and its mirror image's."""
    model, config, _ = load_model(model_dir)
    model.eval()
    images = torch.rand(3, 3, config.data.resize, config.data.resize)
    views = tta_views("flip", config.data.resize, config.model.img_size)
    center, mirrored = views.make(images)
    at = (config.data.resize - config.model.img_size + 1) // 2
    assert torch.equal(center, images[..., at:at + config.model.img_size, at:at + config.model.img_size])
    assert torch.equal(mirrored, center.flip(-1))
    with torch.no_grad():
        outputs = [model(center), model(mirrored)]
    preds = Predictions()
    preds.add_views(["a", "b", "c"], torch.tensor([0, 1, 2]), outputs)
    expected = sum(sum(h.softmax(-1) for h in head_logits(o).values()) for o in outputs) / 2
    assert preds.topk[ENSEMBLE] == expected.topk(5, dim=-1).indices.tolist()
    assert torch.allclose(torch.tensor(preds.scores), expected.topk(5, dim=-1).values / 9, atol=1e-6)  # the nine heads' mean
