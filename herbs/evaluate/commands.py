"""`herbs eval`, `herbs predict`, `herbs heatmap`: a trained model directory at work."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from herbs.atomic import in_progress
from herbs.data.commands import add_pixel_limit, positive

MODEL_HELP = "a herbs model directory (a run's best/, or one written by `herbs import-checkpoint`)"
EVAL_BATCH = "the model config's data.eval_batch_size"
NAMES_NOTE = (
    "A model directory without class names (an original checkpoint imported without --classes) calls its "
    "classes class_0, class_1, ... in label order."
)


def not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser, *, images: str = "", device: bool = True, batch_default: str) -> None:
    """What every command here takes: the model directory, the inputs, the device and precision, batching."""
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help=MODEL_HELP)
    if images:
        parser.add_argument("paths", nargs="+", metavar=images, help="image files and/or folders (searched recursively)")
    if device:
        parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=positive, metavar="N", help=f"images per forward pass (default: {batch_default})")
    parser.add_argument("--workers", type=not_negative, metavar="N", help="decoding worker processes; 0 decodes in this process (default: min(4, CPU cores))")
    add_pixel_limit(parser, None, "the model config's data.max_image_pixels")


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"), help="mixed precision of the forward pass (fp16: GPU only) (default: no)")


def register(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="evaluate a model on a split of shards or a labelled image folder: accuracy per head, groups, per class",
        description=(
            "Evaluate a model directory on a split of shards (--shards DIR --split test) or on an image folder laid out "
            "ROOT/<class>/<image> (--images ROOT; folder names must be the model's class names). Reports top-1/3/5 of "
            "every head (layer1-4, FPN1_layer1-4 averaged over tokens, comb_outs) and of the nine-head ensemble, the "
            "published number; accuracy within class groups and the 'outer errors' that fall outside the true class's "
            "group (CUB: name-suffix groups, NABirds: its hierarchy at --group-level); per-class accuracy. Writes "
            "report.json, per_class.csv, predictions.csv and a confusion-matrix PNG (one per group beyond 60 classes) "
            "into --out. Runs as one process or under `accelerate launch -m herbs.cli eval ...`, with the same numbers. "
            + NAMES_NOTE
        ),
    )
    add_model_options(ev, device=False, batch_default=EVAL_BATCH)
    add_precision(ev)
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", metavar="DIR", help="a shards directory (manifest.json + tars) with the model's classes")
    source.add_argument("--images", metavar="ROOT", help="an image folder ROOT/<class>/<image>, class folders named as the model's classes")
    ev.add_argument("--split", help="the split of --shards to evaluate (default: test)")
    ev.add_argument("--out", metavar="DIR", help="where to write the report (default: CHECKPOINT-eval-<split> or CHECKPOINT-eval-<folder name>, beside the model)")
    ev.add_argument("--groups", default="auto", choices=("auto", "manifest", "suffix", "none"),
                    help="class groups for group accuracy and outer errors: auto = the manifest's hierarchy with --shards, "
                         "none with --images; suffix = the last word of each class name (CUB style) (default: auto)")
    ev.add_argument("--group-level", type=positive, metavar="N",
                    help="with a class tree (NABirds): group classes by their ancestor N levels up; 1 = parent (default: 1)")
    ev.add_argument("--tta", choices=("flip", "flip+crops"),
                    help="also report test-time augmentation: the ensemble averaged over the centre crop and its mirror image "
                         "(flip), and the four corner crops of the resized image too (flip+crops); the plain numbers are "
                         "kept, from the same forward passes (default: none)")
    ev.set_defaults(func=run_eval)

    pr = subparsers.add_parser(
        "predict",
        help="top-k classes for image files or folders, as CSV or JSON lines",
        description=(
            "Predict the top-k classes of images (files, or folders searched recursively) with the nine-head ensemble. "
            "A score is the mean of the nine heads' probabilities (0..1, summing to 1 over all classes). Images are "
            "decoded in worker processes (grayscale, CMYK, PNG and EXIF-rotated photos are handled), batched, and run "
            "on the GPU when there is one. Rows come out in input order, on stdout by default. A file that cannot be "
            "read is named on stderr and skipped; the others are still predicted, and the exit code is 1. " + NAMES_NOTE
        ),
    )
    add_model_options(pr, images="PATH", batch_default=EVAL_BATCH)
    add_precision(pr)
    pr.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    pr.add_argument("--format", choices=("csv", "jsonl"), help="csv: path,class_1,score_1,...; jsonl: one JSON object per image "
                                                                 "(default: from the --output suffix, else csv)")
    pr.add_argument("--topk", type=positive, default=5, metavar="K", help="classes per image (default: 5)")
    pr.set_defaults(func=run_predict)

    hm = subparsers.add_parser(
        "heatmap",
        help="draw where the model looks (Grad-CAM over the backbone taps and both pyramids), one PNG per image",
        description=(
            "Grad-CAM heatmaps as in the original HERBS code: the gradient of a class's ensemble score (the predicted "
            "class, or --class) with respect to the four backbone taps and the features entering the two pyramids "
            "weighs their channels; the maps are multiplied per scale and over all scales, upsampled and overlaid on "
            "the image. One PNG per image in --out (folders keep their sub-folders): the image and the overlay at the "
            "image's aspect ratio, the four per-scale maps below, the class and its score in the title; the dashed box "
            "is the centre crop the model sees. Images are processed in batches. " + NAMES_NOTE
        ),
    )
    add_model_options(hm, images="IMAGE", batch_default="8")
    hm.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    hm.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (a name, or an index) instead of the predicted one")
    hm.add_argument("--size", type=positive, default=512, metavar="PX", help="longer side of the drawn image in pixels (default: 512)")
    hm.set_defaults(func=run_heatmap)


def run_eval(args: argparse.Namespace) -> int:
    from herbs.evaluate.evaluation import evaluate
    from herbs.evaluate.predict import default_workers

    evaluate(args.checkpoint, shards=args.shards, split=args.split, images=args.images, out=args.out,
             batch_size=args.batch_size, workers=default_workers() if args.workers is None else args.workers,
             precision=args.precision, groups=args.groups, group_level=args.group_level, max_image_pixels=args.max_image_pixels,
             tta=args.tta)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from herbs.errors import HerbsError
    from herbs.evaluate.images import find_images
    from herbs.evaluate.inference import check_precision, load_for_inference
    from herbs.evaluate.predict import PredictionWriter, Unreadable, check_output, default_workers, predict_images
    from herbs.progress import Progress

    inputs = find_images(args.paths)
    if args.output:
        check_output(Path(args.output), inputs, args.format)
    inference = load_for_inference(args.checkpoint, args.device, max_image_pixels=args.max_image_pixels)
    check_precision(args.precision, inference.device)
    fmt = args.format or ("jsonl" if args.output and Path(args.output).suffix.lower() in (".jsonl", ".ndjson") else "csv")
    # --output is written under its in-progress name and renamed when complete: a kill keeps the previous file whole
    partial = in_progress(Path(args.output), str(os.getpid())) if args.output else None
    try:  # surrogateescape: a file name that is not UTF-8 is written as its own bytes
        stream = open(partial, "w", newline="", encoding="utf-8", errors="surrogateescape") if args.output else sys.stdout
    except OSError as err:
        raise HerbsError(f"cannot write '{args.output}' ({err.strerror}); choose a writable --output") from None
    start, done, skipped = time.perf_counter(), 0, 0
    progress = Progress(len(inputs), "predict", unit="img")
    try:
        writer = PredictionWriter(stream, fmt, min(args.topk, inference.num_classes))
        results = predict_images(inference, inputs, topk=args.topk, batch_size=args.batch_size or inference.config.data.eval_batch_size,
                                 workers=default_workers() if args.workers is None else args.workers, precision=args.precision)
        for result in progress.wrap(results):
            if isinstance(result, Unreadable):
                skipped += 1
                progress.write(f"herbs predict: skipped '{result.key}': it {result.reason}")
                continue
            writer.write(result)
            done += 1
            if done % 64 == 0:
                writer.flush()
        writer.flush()
        if args.output:
            stream.close()
            os.replace(partial, args.output)
    except BrokenPipeError:  # `herbs predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor let the exit's flush fail
        return 0
    finally:
        progress.close()
        if args.output:
            stream.close()
            partial.unlink(missing_ok=True)
    print(f"herbs predict: {done} images predicted, {skipped} skipped, in {time.perf_counter() - start:.1f} s"
          + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
    return 1 if skipped else 0


def run_heatmap(args: argparse.Namespace) -> int:
    from herbs.errors import HerbsError
    from herbs.evaluate.heatmap import foreign_file, heatmaps, output_path, render
    from herbs.evaluate.images import find_images
    from herbs.evaluate.inference import load_for_inference, writable_dir
    from herbs.evaluate.predict import Unreadable, default_workers

    inputs = find_images(args.paths)
    outs = {Path(args.out).resolve(), Path(os.path.abspath(args.out))}  # through links, and as named
    mixed = [i.path for i in inputs if outs & {*i.path.resolve().parents, *Path(os.path.abspath(i.path)).parents}]
    if mixed:  # a heatmap is named after its image: it could write over a photo
        raise HerbsError(f"--out {args.out} holds the input image '{mixed[0]}'; pass another folder for the heatmaps")
    taken: set[Path] = set()
    paths = [output_path(Path(args.out), i.name, taken) for i in inputs]
    foreign = next((path for path in paths if foreign_file(path)), None)
    if foreign:
        raise HerbsError(f"--out {args.out} already holds '{foreign}', which is not a heatmap herbs drew; pass another folder, or move the file")
    inference = load_for_inference(args.checkpoint, args.device, max_image_pixels=args.max_image_pixels)
    class_index = inference.class_index(args.class_name) if args.class_name is not None else None
    writable_dir(Path(args.out), "--out")
    skipped = 0
    results = heatmaps(inference, inputs, class_index=class_index, batch_size=args.batch_size or 8,
                       workers=default_workers() if args.workers is None else args.workers, display=args.size)
    for result, path in zip(results, paths):  # one result per input, in their order
        if isinstance(result, Unreadable):
            skipped += 1
            print(f"herbs heatmap: skipped '{result.key}': it {result.reason}", file=sys.stderr)
            continue
        path = render(result, path)
        print(f"{path}\t{result.class_name}\t{result.score:.4f}")
    if skipped:
        print(f"herbs heatmap: {skipped} of {len(inputs)} images could not be read and have no heatmap", file=sys.stderr)
    return 1 if skipped else 0
