"""`herbs predict`: one row per readable image in input order, the unreadable one named on stderr;
grayscale, CMYK, PNG (RGBA, 16-bit) and EXIF-rotated photos; CSV and JSON lines; the benchmark."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from herbs.cli import build_parser
from herbs.data.transforms import EvalTransform
from herbs.evaluate.images import ImageFiles, find_images
from herbs.evaluate.inference import load_for_inference
from herbs.evaluate.predict import Prediction, predict_images

from test_eval_helpers import DEMO_NAMES, micro_model, one_sentence, photo_variants, run_cli
from train_helpers import REPO


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model(tmp_path_factory.mktemp("predict") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_variants(tmp_path_factory.mktemp("predict") / "photos")


def test_one_row_per_readable_image_and_the_unreadable_one_reported(model_dir, photos, capsys):
    folder = photos["rgb.jpg"].parent
    code, out, err = run_cli(capsys, "predict", "--checkpoint", model_dir, folder, "--workers", "0", "--batch-size", "4")
    assert code == 1  # some input could not be read; the others are predicted
    assert f"skipped '{photos['broken.jpg']}'" in err and "not a readable image" in err
    assert "9 images predicted, 1 skipped" in err
    rows = list(csv.DictReader(out.splitlines()))
    readable = sorted(str(p) for name, p in photos.items() if name != "broken.jpg")
    assert [r["path"] for r in rows] == readable  # input (sorted) order, the broken file left out
    for row in rows:
        scores = [float(row[f"score_{i}"]) for i in range(1, 6)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-5
        assert all(row[f"class_{i}"] in DEMO_NAMES for i in range(1, 6))


def test_photo_formats_decode_to_the_same_picture(model_dir, photos):
    """Each variant becomes the same upright RGB image: EXIF-rotated ones are turned back, grayscale and
    16-bit become three equal channels, CMYK and RGBA become RGB."""
    drawn = {}
    for name, path in photos.items():
        item = ImageFiles([path], EvalTransform(72, 64), display=120)[0]
        if name == "broken.jpg":
            assert "error" in item and "image" not in item
            continue
        assert item["image"].shape == (3, 64, 64)
        drawn[name] = item["display"].astype(float)
    assert all(d.shape == (80, 120, 3) for d in drawn.values())  # wide, as the picture is; not turned
    for name in ("rgb.jpg", "exif.jpg", "cmyk.jpg"):  # lossy: close
        assert np.abs(drawn[name] - drawn["rgb.png"]).mean() < 6, name
    assert np.abs(drawn["gray.jpg"] - drawn["gray.png"]).mean() < 6
    assert np.array_equal(drawn["gray.png"], np.repeat(drawn["gray.png"][..., :1], 3, -1))
    # Lossless variants: exactly the plain PNG's pixels, so exactly its predictions.
    inference = load_for_inference(model_dir)
    results = {r.key: r for r in predict_images(inference, find_images([photos[n] for n in drawn]), topk=20)}
    for name, same_as in (("rgba.png", "rgb.png"), ("exif.png", "rgb.png"), ("gray16.png", "gray.png")):
        assert np.array_equal(drawn[name], drawn[same_as]), name
        got, want = results[str(photos[name])], results[str(photos[same_as])]
        assert (got.classes, got.scores) == (want.classes, want.scores), name


def test_jsonl_to_a_file_with_worker_processes(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    files = [photos["exif.jpg"], photos["broken.jpg"], photos["rgb.jpg"]]
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", model_dir, *files, "--output", out, "--topk", "3", "--workers", "2", "--batch-size", "2")
    assert code == 1 and stdout == "" and f"wrote {out}" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(photos["exif.jpg"]), str(photos["rgb.jpg"])]
    assert all(len(line["top"]) == 3 and DEMO_NAMES[line["top"][0]["index"]] == line["top"][0]["class"] for line in lines)
    # The same numbers in process as through the command.
    inference = load_for_inference(model_dir)
    direct = [r for r in predict_images(inference, find_images(files), topk=3) if isinstance(r, Prediction)]
    assert [[t["class"] for t in line["top"]] for line in lines] == [r.classes for r in direct]
    assert [[t["score"] for t in line["top"]] for line in lines] == [[round(s, 6) for s in r.scores] for r in direct]


def test_bad_input_is_one_sentence(model_dir, tmp_path, capsys):
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "missing.jpg")[::2])
    assert "missing.jpg" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "empty")[::2])
    assert "holds no images" in line
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", tmp_path, model_dir / "config.yaml")[::2])
    assert "not a herbs model directory" in line
    (tmp_path / "x.jpg").write_bytes(b"")
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "x.jpg", "--precision", "fp16", "--device", "cpu")[::2])
    assert "fp16 needs a GPU" in line


@pytest.mark.parametrize("command, words", [
    ("eval", ["--checkpoint", "--shards", "--images", "--split", "--groups", "--group-level", "outer errors", "accelerate launch"]),
    ("predict", ["--checkpoint", "--output", "--format", "--topk", "EXIF", "stderr"]),
    ("heatmap", ["--checkpoint", "--out", "--class", "Grad-CAM", "aspect ratio"]),
])
def test_commands_describe_themselves(command, words):
    text = " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())
    for word in words:
        assert word in text, word


def test_benchmark_prints_one_json_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "predict.py"), "--images", "4", "--batch", "2", "--workers", "0",
                           "--side", "64", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["benchmark"] == "predict" and result["images"] == 4 and result["images_per_s"] > 0
