"""Where the model looks: Grad-CAM maps as the original HERBS code draws them (its heat.py).

For a class (the predicted one by default), the gradient of its ensemble score (HERBS_SPEC.md §7)
is taken with respect to twelve feature maps: the four backbone taps and, at each tap, the
projections that enter the top-down and the bottom-up pyramid. For each map, the gradient's mean
over the tokens weighs the channels, `relu(weight * feature)` is summed over the channels, and
the result is divided by its maximum and upsampled to the model's input. A scale's map is the
product of its three maps; the combined map is the product of all twelve (where the scales
agree), each renormalised to 0..1.

The model sees the centre crop of the resized image (`data.resize` square, crop `model.img_size`);
the maps are drawn back onto the whole image, with its own aspect ratio, and the part the model
never saw is left uncoloured and outlined.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from herbs.atomic import in_progress  # noqa: E402
from herbs.config import TAPS  # noqa: E402
from herbs.errors import HerbsError  # noqa: E402
from herbs.data.transforms import EvalTransform, normalize  # noqa: E402
from herbs.evaluate.images import ImageFiles, ImageInput, image_batches  # noqa: E402
from herbs.evaluate.inference import InferenceModel  # noqa: E402
from herbs.model.herbs_model import ensemble_probabilities  # noqa: E402
from herbs.evaluate.predict import Unreadable, eval_transform  # noqa: E402

SOURCES = ("backbone", "top_down", "bottom_up")
# A PNG text entry in every heatmap: a rerun replaces its own pictures and no file of the user's by the same name
SIGNATURE = {"Source": "herbs heatmap"}
TITLE_PX = 44  # height of the title band of a heatmap picture
DPI = 100


@dataclass
class Heatmap:
    key: str  # the image's path
    name: str  # where it was found, relative: names the output
    class_index: int
    class_name: str
    score: float  # the class's ensemble score / 9 (mean probability of the nine heads)
    predicted_index: int
    predicted_name: str
    predicted_score: float
    image: np.ndarray  # uint8 [h, w, 3]: the image resized for drawing, in its own aspect ratio
    combined: np.ndarray  # float32 [h, w] in 0..1; NaN where the model did not look (outside the crop)
    scales: list[np.ndarray]  # one [h, w] map per tap
    box: tuple[float, float, float, float]  # the model's crop in image pixels: x0, y0, x1, y1
    grids: list[int]  # tokens per side of each tap


def unit_max(maps: torch.Tensor, empty: float) -> torch.Tensor:
    """Divide each [.., H, W] map by its maximum; a map that is zero everywhere becomes `empty`."""
    peak = maps.amax((-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-30), torch.full_like(maps, empty))


def channel_cam(feature: torch.Tensor, grad: torch.Tensor, size: int) -> torch.Tensor:
    """[B, L, C] tokens (a square grid, row-major) and their gradient -> [B, size, size] in 0..1."""
    b, length, _ = feature.shape
    side = math.isqrt(length)
    weights = grad.mean(1, keepdim=True)
    cam = torch.relu(weights * feature).sum(-1).view(b, 1, side, side)
    cam = unit_max(cam, 1.0)  # an empty map must not wipe out the product
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def grad_cam(model, images: torch.Tensor, classes: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
    """(probabilities [B, K], the classes explained [B], per-tap maps [4 x [B, S, S]] and the combined map as a fifth,
    tokens per side of each tap); S is the input side. `classes` None explains each image's predicted class."""
    features: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            outputs = output if isinstance(output, (list, tuple)) else [output]
            for i, tensor in enumerate(outputs):
                tensor.retain_grad()
                features[name if len(outputs) == 1 else f"{name}/{TAPS[i]}"] = tensor
        return hook

    handles = [model.backbone.register_forward_hook(keep("backbone"))]
    for tap in TAPS:
        handles.append(model.top_down.proj[tap].register_forward_hook(keep(f"top_down/{tap}")))
        handles.append(model.bottom_up.proj[tap].register_forward_hook(keep(f"bottom_up/{tap}")))
    try:
        with torch.enable_grad():
            probs = ensemble_probabilities(model(images.requires_grad_(True)))
            chosen = probs.detach().argmax(-1) if classes is None else classes
            probs.gather(1, chosen[:, None]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    size = images.shape[-1]
    with torch.no_grad():
        per_tap, grids = [], []
        for tap in TAPS:
            maps = [channel_cam(features[f"{source}/{tap}"], features[f"{source}/{tap}"].grad, size) for source in SOURCES]
            per_tap.append(maps[0] * maps[1] * maps[2])
            grids.append(math.isqrt(features[f"backbone/{tap}"].shape[1]))
        combined = unit_max(torch.stack(per_tap).prod(0), 0.0)
        scales = [unit_max(m, 0.0) for m in per_tap]
    return probs.detach(), chosen, scales + [combined], grids


def to_image(maps: torch.Tensor, transform: EvalTransform, height: int, width: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """[N, crop, crop] maps of the model's input -> [N, height, width] over the whole image (NaN outside the
    crop), and the crop's box in those pixels. The eval transform resizes the image to `resize` square and
    cuts the centre `crop`."""
    r, c = transform.resize, transform.crop
    top = int(round((r - c) / 2.0))
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * r / height - top) / c  # 0..1 inside the crop
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * r / width - top) / c
    grid = torch.stack(torch.meshgrid(xs * 2 - 1, ys * 2 - 1, indexing="xy"), -1)[None]
    sampled = F.grid_sample(maps[:, None].float(), grid.expand(len(maps), -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    inside = ((ys >= 0) & (ys <= 1))[:, None] & ((xs >= 0) & (xs <= 1))[None, :]
    sampled = torch.where(inside, sampled, torch.full_like(sampled, float("nan")))
    box = (top * width / r, top * height / r, (top + c) * width / r, (top + c) * height / r)
    return sampled.numpy(), box


def heatmaps(inference: InferenceModel, inputs: list[ImageInput], *, class_index: Optional[int] = None, batch_size: int = 8,
             workers: int = 0, display: int = 512) -> Iterator[Union[Heatmap, Unreadable]]:
    """One Heatmap (or Unreadable) per input, in input order, computed in batches."""
    if inference.config.model.head != "herbs":
        raise HerbsError(f"model '{inference.path}' has a {inference.config.model.head} head, and heatmaps are drawn from the HERBS "
                         "pyramids; pass a model trained with model.head herbs")
    model, device, data = inference.model, inference.device, inference.config.data
    model.requires_grad_(False)  # gradients flow to the features through the input, not into the weights
    transform = eval_transform(inference)
    dataset = ImageFiles([i.path for i in inputs], transform, display=display, max_pixels=data.max_image_pixels)
    for batch in image_batches(dataset, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda"):
        results: dict[int, Union[Heatmap, Unreadable]] = {i: Unreadable(key, why) for i, key, why in batch["errors"]}
        if batch["key"]:
            images = normalize(batch["image"].to(device, non_blocking=True), data.mean, data.std)
            classes = None if class_index is None else torch.full((len(images),), class_index, device=device)
            probs, chosen, maps, grids = grad_cam(model, images, classes)
            predicted = probs.argmax(-1)
            for row, (index, key) in enumerate(zip(batch["index"], batch["key"])):
                image = batch["display"][row]
                drawn, box = to_image(torch.stack([m[row] for m in maps]).cpu(), transform, *image.shape[:2])
                c, p = int(chosen[row]), int(predicted[row])
                results[index] = Heatmap(
                    key, inputs[index].name, c, inference.class_names[c], float(probs[row, c]), p, inference.class_names[p],
                    float(probs[row, p]), image, drawn[-1], list(drawn[:-1]), box, grids,
                )
        for index in sorted(results):
            yield results[index]


def title_of(h: Heatmap) -> str:
    text = f"{h.class_name}: {h.score:.1%}"
    if h.class_index != h.predicted_index:
        text += f"   (predicted: {h.predicted_name}, {h.predicted_score:.1%})"
    return text


def render(h: Heatmap, path: Path) -> Path:
    """One PNG: the image and its overlay side by side at the image's aspect ratio, the four per-scale maps
    under them at half size, the class and its score in the title. Size: 2w x (44 + 1.5h) pixels."""
    height, width = h.image.shape[:2]
    fig_w, fig_h = 2 * width, TITLE_PX + height + height / 2
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    font = max(6.0, min(12.0, fig_w / 45))
    fig.text(0.5, 1 - 0.5 * TITLE_PX / fig_h, title_of(h), ha="center", va="center", fontsize=font, weight="bold")
    gray = np.repeat(h.image.mean(-1, keepdims=True), 3, -1).astype(np.uint8)

    def panel(x: float, y: float, w: float, hh: float, picture: np.ndarray, overlay: Optional[np.ndarray], label: str = ""):
        ax = fig.add_axes((x / fig_w, y / fig_h, w / fig_w, hh / fig_h))
        ax.imshow(picture, aspect="auto", extent=(0, width, height, 0), interpolation="bilinear")
        if overlay is not None:
            ax.imshow(np.ma.masked_invalid(overlay), cmap="jet", vmin=0.0, vmax=1.0, alpha=0.5, aspect="auto",
                      extent=(0, width, height, 0), interpolation="bilinear")
            x0, y0, x1, y1 = h.box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--", linewidth=0.8))
        if label:
            ax.text(0.02, 0.97, label, transform=ax.transAxes, ha="left", va="top", fontsize=max(5.0, font * 0.7), color="white",
                    bbox=dict(facecolor="black", alpha=0.6, pad=1.5, edgecolor="none"))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")

    small = height / 2
    panel(0, small, width, height, h.image, None, "image")
    panel(width, small, width, height, h.image, h.combined, "all scales")
    for i, (tap, scale) in enumerate(zip(TAPS, h.scales)):
        panel(i * width / 2, 0, width / 2, small, gray, scale, f"{tap} ({h.grids[i]}x{h.grids[i]})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = in_progress(path, str(os.getpid()))  # renamed into place: a link at `path` is replaced, never written through
    try:
        fig.savefig(tmp, dpi=DPI, facecolor="white", format="png", metadata=SIGNATURE)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def foreign_file(path: Path) -> bool:
    """Whether `path` is a file that no heatmap drew, which writing the heatmap there would replace (a link is
    replaced itself, never written through, so what it leads to stays)."""
    if path.is_symlink() or not path.exists():
        return False
    try:
        with Image.open(path) as picture:
            return any(picture.info.get(key) != value for key, value in SIGNATURE.items())
    except OSError:  # not a picture, or a folder
        return True


def output_path(out_dir: Path, name: str, taken: set) -> Path:
    """`out_dir/<name with .png>`, with -2, -3, ... when two inputs would write the same file."""
    path = out_dir / Path(name).with_suffix(".png")
    stem, n = path.with_suffix(""), 2
    while path in taken:
        path = Path(f"{stem}-{n}.png")
        n += 1
    taken.add(path)
    return path
