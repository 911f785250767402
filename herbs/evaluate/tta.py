"""Test-time augmentation for `herbs eval --tta`: the views of a batch of resized images.

Every view is cut on the device from the image resized to `data.resize`, so the first (the
centre crop) is exactly the image plain evaluation sees, and the plain numbers come from the
same forward passes. `flip` adds its mirror image; `flip+crops` also the four corner crops.
"""

from __future__ import annotations

import torch

from herbs.data.transforms import center_offset
from herbs.errors import HerbsError
from herbs.predictions import Views


def views(kind: str, size: int, crop: int) -> Views:
    """The `kind` views (`flip` or `flip+crops`, as `herbs eval --tta` offers them) of
    [B, 3, size, size] images, each [B, 3, crop, crop]."""
    if kind == "flip+crops" and size == crop:  # six views, two of them different
        raise HerbsError(f"--tta flip+crops cuts the corners of the image resized to data.resize {size}, which is the model's "
                         f"crop (model.img_size {crop}): every corner is the centre; use --tta flip")
    at = center_offset(size, crop)
    corners = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop)]

    def make(images: torch.Tensor) -> list[torch.Tensor]:
        center = images[..., at:at + crop, at:at + crop]
        cut = [center, center.flip(-1)]
        if kind == "flip+crops":
            cut += [images[..., top:top + crop, left:left + crop] for top, left in corners]
        return cut

    return Views(kind, 2 + len(corners) * (kind == "flip+crops"), make)
