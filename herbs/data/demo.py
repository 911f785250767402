"""A small synthetic fine-grained dataset: 20 look-alike birds on cluttered backgrounds.

Classes are 4 body colours x 5 variants that differ only in small parts: a long orange beak,
a white wing bar, a red or a yellow crown. The body colour is the class group (like a bird
family), so group metrics have something to measure. Position, size, tilt, facing, colour
shade, background and clutter vary per image; everything is drawn from a fixed seed, so the
same arguments give the same images. ~1,500 images take a few seconds.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from herbs.data.source import ClassGroup, Sample, SourceDataset

BODIES = {"slate": (50, 80, 190), "olive": (80, 140, 40), "rust": (175, 80, 30), "grey": (105, 105, 115)}
VARIANTS = ("plain", "long_beak", "wing_bar", "red_crown", "yellow_crown")
# Pale, muted scenery: the clutter is busy but the bird stands out from it, as a photographed one does.
BACKGROUNDS = ((205, 215, 190), (225, 215, 195), (195, 210, 225), (220, 205, 190), (190, 205, 185))
CANVAS = 100  # the bird is drawn facing right on a CANVAS x CANVAS layer, then placed


def shade(colour, rng: random.Random, spread: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-spread, spread))) for c in colour)


def background(size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), shade(rng.choice(BACKGROUNDS), rng, 15))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(8, 14)):
        colour = shade(rng.choice(BACKGROUNDS), rng, 40)
        x, y = rng.uniform(-10, size), rng.uniform(-10, size)
        if rng.random() < 0.5:  # branches and grass
            draw.line((x, y, x + rng.uniform(-60, 60), y + rng.uniform(-60, 60)), fill=colour, width=rng.randint(1, 5))
        else:  # leaves and stones
            w, h = rng.uniform(5, 30), rng.uniform(5, 30)
            draw.ellipse((x, y, x + w, y + h), fill=colour)
    return image


def bird(body: tuple[int, int, int], variant: str, rng: random.Random) -> Image.Image:
    layer = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    body = shade(body, rng, 15)
    dark = tuple(int(c * 0.65) for c in body)
    light = tuple(min(255, int(c * 1.35) + 40) for c in body)
    draw.line((42, 72, 38, 88), fill=(60, 50, 40), width=3)  # legs
    draw.line((55, 72, 58, 88), fill=(60, 50, 40), width=3)
    draw.polygon([(22, 50), (2, 40), (4, 62)], fill=dark)  # tail
    draw.ellipse((16, 36, 74, 76), fill=body)
    draw.ellipse((30, 54, 70, 76), fill=light)  # belly
    draw.ellipse((26, 42, 62, 64), fill=dark)  # wing
    if variant == "wing_bar":
        draw.polygon([(34, 42), (48, 42), (42, 64), (28, 64)], fill=(250, 250, 245))
    head = (52, 18, 80, 46)
    draw.ellipse(head, fill=body)
    if variant in ("red_crown", "yellow_crown"):
        draw.pieslice(head, 150, 390, fill=(225, 30, 30) if variant == "red_crown" else (245, 215, 20))
    if variant == "long_beak":
        draw.polygon([(77, 27), (77, 41), (99, 35)], fill=(250, 130, 10))
    else:
        draw.polygon([(78, 29), (78, 39), (87, 35)], fill=(45, 40, 35))
    draw.ellipse((66, 27, 74, 35), fill=(255, 255, 255))  # eye
    draw.ellipse((69, 29, 73, 33), fill=(0, 0, 0))
    return layer


def draw_image(body: tuple[int, int, int], variant: str, size: int, rng: random.Random) -> Image.Image:
    image = background(size, rng)
    side = int(size * rng.uniform(0.7, 0.95))
    layer = bird(body, variant, rng).resize((side, side), Image.BILINEAR)
    if rng.random() < 0.5:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    layer = layer.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, expand=False)
    slack = size - side
    image.paste(layer, (rng.randint(min(0, slack), max(0, slack)), rng.randint(min(0, slack), max(0, slack))), layer)
    if rng.random() < 0.3:  # a twig in front of the bird
        draw = ImageDraw.Draw(image)
        y = rng.uniform(0, size)
        draw.line((0, y, size, y + rng.uniform(-40, 40)), fill=shade((90, 70, 50), rng, 20), width=rng.randint(1, 3))
    return image


def make_demo(seed: int = 0, *, train: int = 48, val: int = 10, test: int = 15, size: int = 128) -> SourceDataset:
    """The demo dataset with `train`, `val` and `test` images per class, `size` pixels square."""
    classes = [(colour, variant) for colour in BODIES for variant in VARIANTS]
    splits = {}
    for split, count in (("train", train), ("val", val), ("test", test)):
        samples = []
        for label, (colour, variant) in enumerate(classes):
            for index in range(count):
                rng = random.Random(f"demo/{seed}/{split}/{label}/{index}")
                out = io.BytesIO()
                draw_image(BODIES[colour], variant, size, rng).save(out, format="JPEG", quality=90)
                samples.append(Sample(source=f"{split}/{colour}_{variant}/{index:04d}.jpg", label=label, data=out.getvalue()))
        splits[split] = samples
    names = [f"{colour}_{variant}" for colour, variant in classes]
    groups = [ClassGroup(colour, tuple(range(i * len(VARIANTS), (i + 1) * len(VARIANTS)))) for i, colour in enumerate(BODIES)]
    return SourceDataset(kind="demo", class_names=names, original_ids=names, splits=splits, groups=groups)
