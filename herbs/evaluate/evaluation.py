"""`herbs eval`: a model directory on a split of shards or on an image folder, in one process or
in every process of `accelerate launch -m herbs.cli eval ...`.

Each rank predicts its own part of the data (the shard loader's exact partition, or every
world_size-th file of the folder); the per-sample results are gathered once at the end and merged
by key, so the report is the same whatever the number of processes. Rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from herbs.accel import build_accelerator, wants_cpu
from herbs.data.folder import class_dirs, images_in
from herbs.data.manifest import Manifest, load_manifest
from herbs.data.stream import eval_stream
from herbs.errors import HerbsError, not_a_directory
from herbs.evaluate.images import ImageFiles, image_batches
from herbs.evaluate.inference import InferenceModel, autocast, check_precision, describe_names, load_for_inference, writable_dir
from herbs.evaluate.predict import eval_transform
from herbs.evaluate.report import check_report_folder, choose_groups, write_report
from herbs.evaluate.tta import views as tta_views
from herbs.metrics import headline, topk_accuracy
from herbs.predictions import gather, predict_batches
from herbs.progress import Progress


def check_classes(inference: InferenceModel, manifest: Manifest) -> str:
    """The checkpoint's classes must be the shards' classes, in the same order; returns where the names come from.
    A checkpoint without class names takes the shards' names when the counts agree."""
    ours, theirs = inference.class_names, manifest.class_names
    where = f"the shards in {manifest.root}"
    if len(ours) != len(theirs):
        raise HerbsError(
            f"the model '{inference.path}' has {len(ours)} classes but {where} have {len(theirs)}; "
            "evaluate on shards of the dataset the model was trained for"
        )
    if inference.names_from == "generic":
        inference.class_names = list(theirs)
        return "manifest (the model directory names no classes)"
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            raise HerbsError(
                f"class {index} of the model '{inference.path}' is '{a}' but in {where} it is '{b}'; "
                "evaluate on shards written for this model's classes (same dataset, same class order)"
            )
    return "checkpoint"


def folder_samples(root: Path, inference: InferenceModel) -> tuple[list[Path], list[str], list[int]]:
    """`root/<class>/<image>` as (paths, keys, labels), labels in the model's class order."""
    if not root.is_dir():
        raise HerbsError(f"image folder '{root}' {not_a_directory(root)}; pass a folder holding one sub-folder of images per class")
    folders = class_dirs(root)
    if not folders:
        raise HerbsError(f"'{root}' has no class folders; put each class's images in a folder named after the class (root/<class>/<image>)")
    unknown = [name for name in folders if name not in inference.class_names]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise HerbsError(
            f"class folder '{folders[unknown[0]]}'{more} is not a class of the model '{inference.path}' "
            f"({describe_names(inference.class_names)}); rename it to the model's class name or leave it out"
        )
    paths, keys, labels = [], [], []
    for name, folder in folders.items():
        for path in images_in(folder):
            paths.append(path)
            keys.append(str(path.relative_to(root)))
            labels.append(inference.class_names.index(name))
    if not paths:
        raise HerbsError(f"the class folders of '{root}' hold no images; add images or pass another folder")
    return paths, keys, labels


def reported(batches: Iterable[dict], command: str) -> Iterator[dict]:
    """Pass batches on, saying on stderr which files could not be read."""
    for batch in batches:
        for _, key, why in batch.get("errors", ()):
            print(f"herbs {command}: skipped '{key}': it {why}", file=sys.stderr)
        yield batch


def default_out(checkpoint: Path, shards: Optional[str], split: str, images: Optional[str]) -> Path:
    # Beside the model, not in it: training replaces a run's best/ whole at each new best.
    checkpoint = checkpoint.resolve()
    return checkpoint.with_name(f"{checkpoint.name}-eval-{split.replace('/', '_') if shards else Path(images).resolve().name}")


def evaluate(checkpoint: str | Path, *, shards: Optional[str] = None, split: Optional[str] = None, images: Optional[str] = None,
             out: Optional[str | Path] = None, batch_size: Optional[int] = None, workers: Optional[int] = None,
             precision: str = "no", groups: str = "auto", group_level: Optional[int] = None, max_image_pixels: Optional[int] = None,
             tta: Optional[str] = None) -> Optional[dict]:
    """Evaluate and write the report; returns it on rank 0 (None on the other ranks). `split` of the shards
    (default test); `tta` (flip, flip+crops) adds the test-time-augmented numbers, from the same forward passes."""
    if (shards is None) == (images is None):
        raise HerbsError("give exactly one of --shards DIR (with --split) or --images ROOT")
    if images is not None and split is not None:
        raise HerbsError("--split chooses a split of --shards, and an image folder has none; leave --split out with --images")
    split = split or "test"
    checkpoint = Path(checkpoint)
    inference = load_for_inference(checkpoint, "cpu", max_image_pixels)
    config = inference.config
    check_precision(precision, torch.device("cpu" if wants_cpu() else "cuda"))
    named_out = out is not None
    out = Path(out) if named_out else default_out(checkpoint, shards, split, images)

    manifest = load_manifest(shards) if shards is not None else None
    if manifest is not None:
        manifest.split(split)  # a split it does not have is one sentence before anything is written
    names_from = check_classes(inference, manifest) if manifest is not None else inference.names_from
    if images is not None:
        paths, keys, labels = folder_samples(Path(images), inference)
    class_groups, groups_from = choose_groups(groups, inference.class_names, manifest, group_level)

    if manifest is not None:
        described = {"kind": "shards", "shards": manifest.root.absolute, "split": split, "dataset": manifest.dataset,
                     "name": f"{manifest.root.name}/{split}"}
    else:
        described = {"kind": "images", "images": str(Path(images).resolve()), "name": Path(images).resolve().name}
    # Every rank checks, before the process group exists: a refusal on one rank alone would leave the others in a collective.
    check_report_folder(writable_dir(out, "--out"), "--out", data=None if named_out else described)
    config.train.mixed_precision = precision
    accelerator = build_accelerator(config, out)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    model = inference.model.to(device)
    batch_size = batch_size or config.data.eval_batch_size
    workers = config.data.num_workers if workers is None else workers
    views = tta_views(tta, config.data.resize, config.model.img_size) if tta else None
    crop = config.data.resize if views else config.model.img_size  # the views are cut from the whole resized image
    if manifest is not None:
        data = dataclasses.replace(config.data, shards=str(shards), eval_batch_size=batch_size, num_workers=workers)
        batches = eval_stream(data, split, crop=crop, rank=rank, world_size=world, pin_memory=device.type == "cuda")
    else:
        dataset = ImageFiles(paths[rank::world], eval_transform(inference, crop), keys=keys[rank::world], labels=labels[rank::world],
                             max_pixels=config.data.max_image_pixels)
        batches = image_batches(dataset, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda")
    with autocast(device, precision):
        counted = Progress(len(batches), "eval", unit="batch", disable=not accelerator.is_main_process).wrap(batches)
        local = predict_batches(model, reported(counted, "eval"), device, config.data.mean, config.data.std, views=views)
    preds = gather(local, accelerator)
    augmented = gather(views.predictions, accelerator) if views else None

    report = None
    if accelerator.is_main_process:
        info = {
            "checkpoint": str(checkpoint),
            "checkpoint_step": inference.meta.get("step"),  # which of a run's best models this was
            "data": described,
            "class_names_from": names_from,
            "groups_from": groups_from,
            "processes": world,
            "precision": precision,
            "model": {"backbone": config.model.backbone, "img_size": config.model.img_size, "num_classes": config.model.num_classes},
        }
        if augmented is not None:
            metrics = topk_accuracy(augmented)
            info["tta"] = {"views": views.name, "count": views.count,
                           "headline": {"ensemble_top1": headline(metrics) if len(augmented) else None}, "metrics": metrics}
        report = write_report(out, preds, inference.class_names, class_groups, info)
        print(summary(report, out))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not len(preds):
        raise HerbsError(f"no sample of {described['name']} could be used ({preds.skipped} skipped, see {out / 'report.json'}); check the data")
    return report


def summary(report: dict, out: Path) -> str:
    metrics, name = report["metrics"], report["data"]["name"]
    lines = [f"{name}: {report['samples']} images evaluated, {report['skipped']} skipped"]
    if report["samples"]:
        lines.append(topk_line(metrics) + f"  (chance {100.0 / report['num_classes']:.2f}%)")
        if report.get("tta"):
            lines.append(f"with --tta {report['tta']['views']} ({report['tta']['count']} views): {topk_line(report['tta']['metrics'])}")
        heads = {k[: -len("_top1")]: v for k, v in metrics.items() if k.endswith("_top1") and not k.startswith("ensemble")}
        best = max(heads, key=heads.get)
        lines.append(f"best single head: {best} {heads[best]:.2f}% top-1")
    if report["groups"]:
        total = report["groups"]["total"]
        lines.append(f"groups ({report['groups_from']}): {len(report['groups']['groups'])} groups, right group {total['group_top1']:.2f}%, "
                     f"{total['outer_errors']} of {total['errors']} errors fall outside the true class's group")
    if report.get("confusion_note"):
        lines.append(report["confusion_note"])
    files = report["files"]
    lines.append(f"wrote {out / files['report']} (+ {files['per_class']}, {files['predictions']}"
                 + "".join(f", {p}" for p in files.get("confusion", [])[:3]) + (", ..." if len(files.get("confusion", [])) > 3 else "") + ")")
    return "\n".join(lines)


def topk_line(metrics: dict) -> str:
    """`ensemble top-1 ..%  top-3 ..%  top-5 ..%`, for the k the classes allow (top-5 of 4 classes is not measured)."""
    return "  ".join(f"{'ensemble ' if k == 1 else ''}top-{k} {metrics[f'ensemble_top{k}']:.2f}%" for k in (1, 3, 5)
                     if f"ensemble_top{k}" in metrics)
