"""Throughput of the herbs training input pipeline against the original HERBS code's chain.

Prints one JSON line, images per second on one core (one process, one thread) of:
  herbs     tar shard bytes -> uint8 384x384 training crop (TrainStream, no workers: read, shuffle,
            decode, resize 510, crop, flip, blur p=0.1, sharpness p=0.1, batch)
  original  cv2.imread -> RGB -> PIL -> Resize((510, 510)) -> RandomCrop(384) -> RandomHorizontalFlip
            -> RandomApply(GaussianBlur(5, (0.1, 5)), p=0.1) -> RandomAdjustSharpness(1.5, p=0.1)
            -> ToTensor -> Normalize, from JPEG files
  decode    herbs' decoder alone (bytes -> uint8 tensor)
plus herbs / original. Images: generated photo-like 500x375 JPEGs (CUB's typical size), written
as JPEG files and as shards. The pipelines take turns, one batch (16 images) at a time, over
--rounds passes through the images.
Run: python benchmarks/data_pipeline.py [--images 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from herbs.data.source import Sample, SourceDataset
from herbs.data.stream import TrainStream
from herbs.data.transforms import TrainTransform, decode_image
from herbs.data.writer import write_shards
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ORIGINAL = T.Compose([
    T.Resize((510, 510), interpolation=T.InterpolationMode.BILINEAR),
    T.RandomCrop(384),
    T.RandomHorizontalFlip(),
    T.RandomApply([T.GaussianBlur(kernel_size=(5, 5), sigma=(0.1, 5))], p=0.1),
    T.RandomAdjustSharpness(sharpness_factor=1.5, p=0.1),
    T.ToTensor(),
    T.Normalize(mean=MEAN, std=STD),
])


def photo_jpeg(seed: int, width: int = 500, height: int = 375) -> bytes:
    """Smooth colour fields plus sensor-like noise: ~100 kB at quality 90, like CUB's photos."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    out = cv2.imencode(".jpg", cv2.cvtColor(pixels.clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    return out.tobytes()


def original_chain(path: str) -> torch.Tensor:
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    return ORIGINAL(Image.fromarray(image))


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive, default=200)
    parser.add_argument("--rounds", type=positive, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jpegs = [photo_jpeg(seed) for seed in range(args.images)]
        paths = []
        for i, data in enumerate(jpegs):
            paths.append(str(tmp / f"{i:05d}.jpg"))
            Path(paths[-1]).write_bytes(data)
        dataset = SourceDataset("folder", ["a", "b"], ["a", "b"], {"train": [Sample(p, i % 2, data=d) for i, (p, d) in enumerate(zip(paths, jpegs))]})
        write_shards(dataset, tmp / "shards")
        stream = TrainStream(tmp / "shards", "train", TrainTransform(510, 384), rank=0, world_size=1, batch_size=16, num_workers=0, seed=0)
        batches = (batch for epoch in itertools.count() for batch in stream.epoch(epoch))
        original_chain(paths[0]), decode_image(jpegs[0], 510)  # warm up lazy imports and allocations

        # Chunks of one batch, the pipelines taking turns: load from other processes hits all alike.
        seconds = {"herbs": 0.0, "original": 0.0, "decode": 0.0}
        size = stream.batch_size
        count = max(1, args.rounds * len(paths) // size) * size
        for start in range(0, count, size):
            chunk = [i % len(paths) for i in range(start, start + size)]
            seconds["herbs"] += timed(lambda: next(batches))
            seconds["original"] += timed(lambda: [original_chain(paths[i]) for i in chunk])
            seconds["decode"] += timed(lambda: [decode_image(jpegs[i], 510) for i in chunk])

    herbs, original, decode = (count / seconds[k] for k in ("herbs", "original", "decode"))
    print(json.dumps({
        "images": args.images,
        "image_size": [500, 375],
        "herbs_img_per_s_per_core": round(herbs, 1),
        "original_img_per_s_per_core": round(original, 1),
        "ratio": round(herbs / original, 2),
        "decode_img_per_s_per_core": round(decode, 1),
        "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
