"""Helpers shared by the evaluation, prediction and heatmap tests (no tests here).

A "micro" model is the engine tests' 64-px Swin HERBS with random weights scaled by 4, so that
different images get different predictions (at the default scale every image gets the same
class); nothing here needs a trained model.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from herbs.cli import main
from herbs.config import load_config
from herbs.data.demo import BODIES, VARIANTS, draw_image
from herbs.model import HERBSModel
from herbs.model.checkpoint import save_model

from helpers import REPO
from helpers.runs import MICRO

DEMO_NAMES = [f"{body}_{variant}" for body in BODIES for variant in VARIANTS]


def micro_model(out: Path, class_names: list[str] | None = DEMO_NAMES, seed: int = 0, gain: float = 4.0) -> Path:
    config = load_config(REPO / "configs" / "tiny.yaml", MICRO)
    torch.manual_seed(seed)
    model = HERBSModel(config.model)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(gain)
    meta = {} if class_names is None else {"class_names": class_names}
    return save_model(model.state_dict(), config, out, **meta)


def bird(name: str, index: int = 0, size: tuple[int, int] = (120, 80)) -> Image.Image:
    """A demo bird of class `name` (e.g. "rust_wing_bar"), resized to `size` (width, height)."""
    body, variant = name.split("_", 1)
    return draw_image(BODIES[body], variant, 96, random.Random(f"test/{name}/{index}")).resize(size, Image.BILINEAR)


def photo_variants(folder: Path) -> dict[str, Path]:
    """The same wide bird as RGB JPEG and PNG, grayscale JPEG and PNG (8 and 16 bits), CMYK JPEG, RGBA PNG and
    EXIF-rotated JPEG and PNG (pixels stored turned a quarter, orientation tag 6 turning them back), plus a
    broken file. The PNGs are lossless: each decodes to exactly the pixels of rgb.png or gray.png."""
    folder.mkdir(parents=True, exist_ok=True)
    image = bird("slate_wing_bar")
    names = ("rgb.jpg", "rgb.png", "gray.jpg", "gray.png", "gray16.png", "cmyk.jpg", "rgba.png", "exif.jpg", "exif.png", "broken.jpg")
    paths = {name: folder / name for name in names}
    image.save(paths["rgb.jpg"], quality=95)
    image.save(paths["rgb.png"])
    image.convert("L").save(paths["gray.jpg"], quality=95)
    image.convert("L").save(paths["gray.png"])
    Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(paths["gray16.png"])  # full 16-bit range
    image.convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    image.convert("RGBA").save(paths["rgba.png"])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    turned = image.transpose(Image.Transpose.ROTATE_90)
    turned.save(paths["exif.jpg"], quality=95, exif=exif.tobytes())
    turned.save(paths["exif.png"], exif=exif.tobytes())
    paths["broken.jpg"].write_bytes(b"\xff\xd8\xff\xe0 this is not the rest of a JPEG")
    return paths


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`herbs ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_sentence(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
