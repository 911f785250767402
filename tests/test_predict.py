"""`herbs predict`: one row per readable image in input order, the unreadable one named on stderr;
grayscale, CMYK, PNG (RGBA, 16-bit) and EXIF-rotated photos; CSV and JSON lines; the benchmark."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from herbs.cli import build_parser
from herbs.data.transforms import EvalTransform
from herbs.evaluate.images import ImageFiles, find_images
from herbs.evaluate.inference import load_for_inference
from herbs.evaluate.predict import Prediction, predict_images

from helpers.data import bomb_png
from test_eval_helpers import DEMO_NAMES, micro_model, one_sentence, photo_variants, run_cli
from helpers import REPO, wait_for


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
    assert f"herbs predict: skipped '{photos['broken.jpg']}': it is not a readable image: a truncated JPEG\n" in err
    assert "9 images predicted, 1 skipped" in err and "BytesIO" not in err
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
    out.write_text("an earlier run's predictions\n")  # replaced only by a complete file
    files = [photos["exif.jpg"], photos["broken.jpg"], photos["rgb.jpg"]]
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", model_dir, *files, "--output", out, "--topk", "3", "--workers", "2", "--batch-size", "2")
    assert code == 1 and stdout == "" and f"wrote {out}" in err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # its in-progress copy renamed into place
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(photos["exif.jpg"]), str(photos["rgb.jpg"])]
    assert all(len(line["top"]) == 3 and DEMO_NAMES[line["top"][0]["index"]] == line["top"][0]["class"] for line in lines)
    # The same numbers in process as through the command.
    inference = load_for_inference(model_dir)
    direct = [r for r in predict_images(inference, find_images(files), topk=3) if isinstance(r, Prediction)]
    assert [[t["class"] for t in line["top"]] for line in lines] == [r.classes for r in direct]
    assert [[t["score"] for t in line["top"]] for line in lines] == [[round(s, 6) for s in r.scores] for r in direct]


def test_a_prediction_killed_midway_leaves_the_previous_output_whole(model_dir, photos, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(400):  # seconds of work: the kill comes while rows are being written
        shutil.copy(photos["rgb.jpg"], images / f"{i}.jpg")
    out = tmp_path / "predictions.csv"
    out.write_text("an earlier run's predictions\n")
    proc = subprocess.Popen([sys.executable, "-m", "herbs", "predict", "--checkpoint", str(model_dir), str(images), "--output", str(out),
                             "--workers", "0", "--batch-size", "4"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.stat().st_size for p in tmp_path.glob(".predictions.csv.tmp-*")), 120, "the first rows", proc)
    finally:
        proc.kill()
        proc.communicate()
    assert out.read_text() == "an earlier run's predictions\n"


def test_a_reader_that_stops_early_ends_the_predictions_quietly(model_dir, photos, tmp_path):
    for i in range(80):  # more rows than the pipe takes at once
        shutil.copy(photos["rgb.jpg"], tmp_path / f"{i}.jpg")
    shell = f"{shlex.quote(sys.executable)} -m herbs predict --checkpoint {model_dir} {tmp_path} --workers 0 | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr


def test_a_decompression_bomb_is_skipped_and_named_at_the_limit_asked_for(model_dir, photos, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    code, out, err = run_cli(capsys, "predict", "--checkpoint", model_dir, photos["rgb.jpg"], bomb, "--workers", "0")
    assert code == 1 and [r["path"] for r in csv.DictReader(out.splitlines())] == [str(photos["rgb.jpg"])]
    assert (f"herbs predict: skipped '{bomb}': it is not a readable image: a 20000x20000 PNG of 400,000,000 pixels, "
            "over the limit of 178,956,970 (data.max_image_pixels, or --max-image-pixels)\n") in err
    code, out, err = run_cli(capsys, "predict", "--checkpoint", model_dir, photos["rgb.jpg"], "--workers", "0", "--max-image-pixels", "9599")
    assert code == 1 and "a 120x80 JPEG of 9,600 pixels, over the limit of 9,599" in err and "0 images predicted, 1 skipped" in err


def test_model_directories_carry_the_sha256_of_their_weights(model_dir, photos, tmp_path, capsys):
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    damaged = Path(shutil.copytree(model_dir, tmp_path / "damaged"))
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-100] ^= 0x01  # one bit of one weight: still loads, silently wrong without the checksum
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", damaged, photos["rgb.jpg"])[::2])
    assert line == (f"herbs predict: error: '{damaged / 'model.safetensors'}' weights do not match the sha256 recorded in meta.json; "
                    "the file is damaged: re-export or re-copy it")
    old = Path(shutil.copytree(model_dir, tmp_path / "old"))  # written before checksums were recorded
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "weights_sha256"}))
    assert run_cli(capsys, "predict", "--checkpoint", old, photos["rgb.jpg"], "--workers", "0")[0] == 0


def test_bad_input_is_one_sentence(model_dir, tmp_path, capsys):
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "missing.jpg")[::2])
    assert "missing.jpg" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "empty")[::2])
    assert "holds no images" in line
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", tmp_path, model_dir / "config.yaml")[::2])
    assert "not a herbs model directory" in line
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir / "model.safetensors", model_dir / "config.yaml")[::2])
    assert line == (f"herbs predict: error: '{model_dir / 'model.safetensors'}' is a file; pass a model directory holding "
                    "model.safetensors (a run's best/, or one written by `herbs import-checkpoint`)")
    (tmp_path / "x.jpg").write_bytes(b"")
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "x.jpg", "--precision", "fp16", "--device", "cpu")[::2])
    assert "fp16 needs a GPU" in line
    for device in ("cpu:1", "mps", "meta", "nonsense"):  # said as such, not as a damaged model directory
        line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "x.jpg", "--device", device)[::2])
        assert line.startswith(f"herbs predict: error: device '{device}' is not ") and "use auto, cpu, cuda or cuda:N" in line



def test_an_output_that_would_replace_an_input_a_model_file_or_a_folder_is_refused_before_the_work(model_dir, photos, tmp_path, capsys):
    victim = tmp_path / "victim.png"
    shutil.copy(photos["rgb.png"], victim)
    kept = victim.read_bytes()
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, victim, "--output", victim)[::2])
    assert f"--output '{victim}' is one of the input images" in line and victim.read_bytes() == kept  # the old code: CSV in it
    copy = shutil.copytree(model_dir, tmp_path / "model")
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", copy, victim, "--output", copy / "config.yaml")[::2])
    assert f"'{copy}' is a model directory" in line and "--output" in line and load_for_inference(copy)
    for folder in (tmp_path, Path(".")):  # the old code: a traceback after every image was predicted
        line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, victim, "--output", folder)[::2])
        assert f"--output '{folder}' is a folder" in line
    line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", model_dir, victim, "--output", tmp_path / "p.json")[::2])
    assert "one JSON object per line" in line and ".jsonl" in line and not (tmp_path / "p.json").exists()
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(victim, linked / "bird.png")
    (linked / "gone.png").symlink_to(tmp_path / "nowhere.png")  # named and skipped, not in the way of the check
    (tmp_path / "p.csv").write_text("an earlier run's\n")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", model_dir, linked, "--output", tmp_path / "p.csv")
    assert code == 1 and "skipped" in err and "gone.png" in err and "bird.png" in (tmp_path / "p.csv").read_text()


def test_a_damaged_meta_json_is_one_sentence(model_dir, photos, tmp_path, capsys):
    copy = shutil.copytree(model_dir, tmp_path / "model")
    meta = json.loads((copy / "meta.json").read_text())
    for damaged, words in ((b"[]", "holds no JSON object"), (b'{"format": "herbs-model", \xff}', "is not valid JSON"),
                           (json.dumps({**meta, "class_names": "abcdefghijklmnopqrst"}).encode(), "not distinct names"),
                           (json.dumps({**meta, "class_names": ["a"] * 20}).encode(), "not distinct names")):
        (copy / "meta.json").write_bytes(damaged)
        line = one_sentence(*run_cli(capsys, "predict", "--checkpoint", copy, photos["rgb.jpg"])[::2])
        assert words in line and "meta.json" in line


def test_file_names_that_are_not_utf8_are_written_as_they_are(model_dir, photos, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    name = b"bad\xff.jpg"
    shutil.copy(photos["rgb.jpg"], odd.as_posix().encode() + b"/" + name)
    code, _, err = run_cli(capsys, "predict", "--checkpoint", model_dir, odd, "--output", tmp_path / "p.csv")
    assert code == 0, err  # the old code: UnicodeEncodeError, and no file
    assert name in (tmp_path / "p.csv").read_bytes()


@pytest.mark.parametrize("command, words", [
    ("eval", ["--checkpoint", "--shards", "--images", "--split", "--groups", "--group-level", "outer errors", "accelerate launch"]),
    ("predict", ["--checkpoint", "--output", "--format", "--topk", "EXIF", "stderr", "--max-image-pixels"]),
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
