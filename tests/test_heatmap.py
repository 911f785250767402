"""`herbs heatmap`: one PNG per image at the image's aspect ratio, a map that is not constant, the
requested class, batches equal to one image at a time."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data import bomb_png
from herbs.data.transforms import EvalTransform
from herbs.evaluate.heatmap import TITLE_PX, heatmaps, to_image
from herbs.evaluate.images import find_images
from herbs.evaluate.inference import load_for_inference

from test_eval_helpers import bird, micro_model, one_sentence, run_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model(tmp_path_factory.mktemp("heatmap") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("heatmap") / "photos"
    (root / "sub").mkdir(parents=True)
    bird("rust_wing_bar", 0, size=(150, 90)).save(root / "wide.jpg", quality=95)
    bird("olive_long_beak", 1, size=(80, 140)).save(root / "sub" / "tall.png")
    (root / "sub" / "broken.jpg").write_bytes(b"GIF89a? no")
    (root / "sub" / "bomb.png").write_bytes(bomb_png())
    return root


def panel(png: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    return png[y: y + h, x: x + w].astype(float)


def test_png_has_the_image_aspect_ratio_and_a_map_that_is_not_constant(model_dir, photos, tmp_path, capsys):
    code, out, err = run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos, "--out", tmp_path, "--size", "200", "--workers", "0")
    assert code == 1 and "2 of 4 images could not be read" in err  # the other images still get their heatmap
    assert f"skipped '{photos / 'sub' / 'broken.jpg'}': it is not a readable image: a damaged GIF (10 bytes; its header cannot be read)" in err
    assert f"skipped '{photos / 'sub' / 'bomb.png'}': it is not a readable image: a 20000x20000 PNG of 400,000,000 pixels, over the limit" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == ["sub/tall.png", "wide.png"]
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "sub" / "tall.png"))

    for name, source, (w, h) in (("wide.png", "wide.jpg", (200, 120)), ("sub/tall.png", "sub/tall.png", (114, 200))):
        png = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        # Layout: title band, then image | overlay (each w x h, the input's aspect ratio), then four half-size maps.
        assert png.shape[1] == 2 * w and abs(png.shape[0] - (TITLE_PX + h + h / 2)) <= 1
        original = np.asarray(Image.open(photos / source).convert("RGB").resize((w, h), Image.BILINEAR)).astype(float)
        image = panel(png, 0, TITLE_PX, w, h)
        assert np.abs(image - original).mean() < 12  # the left panel is the picture itself, not stretched
        overlay = panel(png, w, TITLE_PX, w, h)
        assert np.abs(overlay - image).mean() > 10  # coloured by the map
        for i in range(4):
            small = panel(png, int(i * w / 2) + 2, TITLE_PX + h + 2, int(w / 2) - 4, int(h / 2) - 4)
            assert small.std() > 5

    inference = load_for_inference(model_dir)
    result = next(heatmaps(inference, find_images([photos / "wide.jpg"]), display=200))
    assert result.combined.shape == (120, 200) and all(s.shape == (120, 200) for s in result.scales)
    seen = result.combined[np.isfinite(result.combined)]
    assert seen.size > 0.7 * result.combined.size and seen.min() >= 0 and seen.max() == pytest.approx(1.0, abs=1e-3)
    assert seen.std() > 0.05  # not constant
    assert result.class_index == result.predicted_index and 0 < result.score <= 1


def test_heatmaps_are_never_written_among_their_input_photos(model_dir, photos, capsys):
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos, "--out", photos)[::2])
    assert line.startswith(f"herbs heatmap: error: --out {photos} holds the input image '{photos}")
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before



def test_a_linked_input_in_out_is_refused_and_no_heatmap_is_written_through_a_link(model_dir, photos, tmp_path, capsys):
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    shutil.copy(photos / "sub" / "tall.png", real / "bird.png")
    kept = (real / "bird.png").read_bytes()
    (links / "bird.png").symlink_to(real / "bird.png")
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, links / "bird.png", "--out", links)[::2])
    assert f"--out {links} holds the input image '{links / 'bird.png'}'" in line  # the old code drew the heatmap over the photo
    out = tmp_path / "heatmaps"
    out.mkdir()
    (out / "bird.png").symlink_to(real / "bird.png")  # a link where the heatmap goes is replaced, not written through
    assert run_cli(capsys, "heatmap", "--checkpoint", model_dir, real / "bird.png", "--out", out)[0] == 0
    assert (real / "bird.png").read_bytes() == kept and not (out / "bird.png").is_symlink()


def test_a_file_in_out_that_no_heatmap_wrote_is_never_replaced(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", out, "--size", "64")[0] == 0
    assert run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", out, "--size", "64")[0] == 0  # a rerun
    shutil.copy(photos / "sub" / "tall.png", out / "wide.png")  # the user's own picture, by the name of a heatmap
    kept = (out / "wide.png").read_bytes()
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", out)[::2])
    assert line == (f"herbs heatmap: error: --out {out} already holds '{out / 'wide.png'}', which is not a heatmap herbs drew; "
                    "pass another folder, or move the file")
    assert (out / "wide.png").read_bytes() == kept


def test_the_requested_class_is_explained(model_dir, photos, tmp_path, capsys):
    code, out, err = run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", tmp_path, "--class", "grey_plain", "--workers", "0")
    assert code == 0, err
    path, name, score = out.strip().split("\t")
    assert path == str(tmp_path / "wide.png") and name == "grey_plain" and 0 < float(score) < 1
    inference = load_for_inference(model_dir)
    index = inference.class_index("grey_plain")
    result = next(heatmaps(inference, find_images([photos / "wide.jpg"]), class_index=index, display=64))
    assert result.class_name == "grey_plain" and float(score) == pytest.approx(result.score, abs=1e-4)
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", tmp_path, "--class", "grey_plian")[::2])
    assert "'grey_plian'" in line and "did you mean 'grey_plain'" in line
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", tmp_path, "--class", "\u00b2")[::2])
    assert "class '\u00b2' is not one of the model's classes" in line  # a digit to str.isdigit, not to int()
    (tmp_path / "file").write_text("")
    line = one_sentence(*run_cli(capsys, "heatmap", "--checkpoint", model_dir, photos / "wide.jpg", "--out", tmp_path / "file" / "maps")[::2])
    assert "cannot be written" in line


def test_batches_give_the_maps_of_one_image_at_a_time(model_dir, photos):
    inference = load_for_inference(model_dir)
    inputs = find_images([photos / "wide.jpg", photos / "sub" / "tall.png", photos / "wide.jpg"])
    together = list(heatmaps(inference, inputs, batch_size=3, display=64))
    alone = [next(heatmaps(inference, [one], batch_size=1, display=64)) for one in inputs]
    for a, b in zip(together, alone):
        assert (a.key, a.class_index) == (b.key, b.class_index)
        assert np.allclose(a.combined, b.combined, atol=1e-4, equal_nan=True)


def test_maps_are_drawn_where_the_model_looked():
    """The eval transform squashes the image to 72 x 72 and cuts the centre 64 x 64: the map covers that part."""
    maps = torch.ones(1, 64, 64)
    drawn, box = to_image(maps, EvalTransform(72, 64), 90, 180)
    assert box == pytest.approx((10.0, 5.0, 170.0, 85.0))  # 4/72 and 68/72 of each side
    inside = np.zeros((90, 180), dtype=bool)
    inside[5:85, 10:170] = True
    assert np.isnan(drawn[0][~inside]).all() and np.allclose(drawn[0][inside], 1.0)
