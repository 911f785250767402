"""Throughput of `herbs predict`: images per second, one process, on the tiny config.

Prints one JSON line. The model is configs/tiny.yaml's (random Swin embed 32, 224 px, 10 classes,
F=64), written as a model directory; the images are demo birds saved as JPEGs (--side pixels
square). The measured loop is the command's own: find the files, decode and transform them in
--workers processes, batch, run the ensemble, write CSV rows (to /dev/null). The first batch is a
warm-up and not timed. Run: python benchmarks/predict.py [--images 256] [--batch 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, side: int) -> None:
    from herbs.data.demo import BODIES, VARIANTS, draw_image

    classes = [(body, variant) for body in BODIES for variant in VARIANTS]
    for i in range(count):
        body, variant = classes[i % len(classes)]
        draw_image(BODIES[body], variant, side, random.Random(f"bench/{i}")).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive, default=256)
    parser.add_argument("--batch", type=positive, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--side", type=positive, default=320, help="side of the JPEGs (the model resizes to 256 and crops 224)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=positive, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from herbs.config import load_config
    from herbs.evaluate.images import find_images
    from herbs.evaluate.inference import load_for_inference
    from herbs.evaluate.predict import PredictionWriter, Unreadable, predict_images
    from herbs.model import HERBSModel
    from herbs.model.checkpoint import save_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = load_config(REPO / "configs" / "tiny.yaml")
        torch.manual_seed(0)
        save_model(HERBSModel(config.model).state_dict(), config, tmp / "model")
        (tmp / "images").mkdir()
        make_images(tmp / "images", args.images, args.side)
        inference = load_for_inference(tmp / "model", args.device)
        inputs = find_images([tmp / "images"])
        warm = inputs[: args.batch]
        for _ in predict_images(inference, warm, batch_size=args.batch, workers=0):
            pass
        with open(os.devnull, "w") as sink:
            writer = PredictionWriter(sink, "csv", 5)
            start = time.perf_counter()
            done = 0
            for result in predict_images(inference, inputs, batch_size=args.batch, workers=args.workers):
                if not isinstance(result, Unreadable):
                    writer.write(result)
                    done += 1
            seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "predict", "config": "configs/tiny.yaml", "device": str(inference.device), "images": done,
        "image_side": args.side, "batch": args.batch, "workers": args.workers, "threads": args.threads,
        "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2),
    }))


if __name__ == "__main__":
    main()
