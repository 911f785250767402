"""Decoding and the published augmentation (HERBS_SPEC.md §8), on uint8 CHW tensors.

    train: resize to resize x resize (bilinear), random crop `crop`, horizontal flip,
           Gaussian blur (kernel 5, sigma uniform in 0.1-5) with p = blur_p,
           sharpness x1.5 with p = sharpness_p
    eval:  resize to resize x resize (bilinear), center crop `crop`

Images stay uint8 from decoding to the device, where `normalize` makes them float. They keep
the height-width-channel memory layout the decoder produces (transforms return views; the
batch is channels_last), which saves two transposing copies per image. The
resize is torch's uint8 antialiased bilinear kernel, a port of PIL's: the eval transform
gives the pixels of the original `PIL Resize((510, 510)) -> CenterCrop(384)` chain.
Randomness comes from the `random.Random` the caller passes, never from global state. Blur and
sharpness are OpenCV's filters (uint8 in, uint8 out, no float copies of the image); OpenCV runs
on one thread, as torch does in a loader worker: the workers are the loader's parallelism.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as tv_decode_image
from torchvision.transforms.v2.functional import resize as tv_resize

from herbs.data.decode import DEFAULT_MAX_PIXELS, opened

cv2.setNumThreads(1)

BLUR_KERNEL = 5
BLUR_SIGMA = (0.1, 5.0)
SHARPNESS = 1.5


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def decode_image(data: bytes, size_hint: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes -> uint8 [3, H, W] RGB, EXIF orientation applied (as cv2.imread does);
    `DecodeError` for bytes that are no image or one of more than `max_pixels` pixels.

    A JPEG at least twice `size_hint` on its short side is decoded at 1/2, 1/4 or 1/8 scale
    by libjpeg itself (PIL's draft mode) when the result is still >= size_hint: the
    following resize to size_hint then costs a fraction. Otherwise torchvision's decoder.
    """
    with opened(data, max_pixels) as image:
        if image.format == "JPEG" and size_hint and min(image.size) >= 2 * size_hint:
            image.draft("RGB", (size_hint, size_hint))
            return pil_to_tensor(ImageOps.exif_transpose(image))
        try:
            decoded = tv_decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:  # formats or JPEG variants torchvision does not take; PIL may
            return pil_to_tensor(ImageOps.exif_transpose(image))
    if decoded.dtype == torch.uint16:  # a 16-bit PNG: round to 8 bits
        decoded = ((decoded.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    return decoded


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    return tv_resize(image, [size, size], antialias=True)


def blur_kernel(sigma: float) -> list[float]:
    x = torch.arange(BLUR_KERNEL, dtype=torch.float64) - BLUR_KERNEL // 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).tolist()


def hwc_array(image: torch.Tensor) -> np.ndarray:
    """uint8 [3, H, W] -> a contiguous [H, W, 3] array for OpenCV (a view when the pixels already lie so)."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision's gaussian_blur (reflect padding, separable kernel) within 1 level, ~10x faster:
    OpenCV's separable filter with the same float kernel on the pixels as they lie."""
    kernel = np.asarray(blur_kernel(sigma), dtype=np.float32)
    blurred = cv2.sepFilter2D(hwc_array(image), -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(blurred).permute(2, 0, 1)


SMOOTHING = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def adjust_sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's adjust_sharpness (PIL's: blend with the 3x3 [1 1 1; 1 5 1; 1 1 1]/13 smoothing,
    rounded to uint8, border pixels kept) within 1 level, ~5x faster with OpenCV's filter and blend."""
    pixels = hwc_array(image)
    smooth = cv2.filter2D(pixels, -1, SMOOTHING, borderType=cv2.BORDER_REPLICATE)  # the border is replaced below
    out = cv2.addWeighted(pixels, factor, smooth, 1.0 - factor, 0.0)
    out[0], out[-1], out[:, 0], out[:, -1] = pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]
    return torch.from_numpy(out).permute(2, 0, 1)


@dataclass(frozen=True)
class EvalTransform:
    resize: int = 510
    crop: int = 384

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = resize(image, self.resize)
        top = left = center_offset(self.resize, self.crop)
        return image[:, top : top + self.crop, left : left + self.crop]


def center_offset(size: int, crop: int) -> int:
    """Where a centred crop starts: torchvision CenterCrop's rounding."""
    return int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class TrainTransform:
    resize: int = 510
    crop: int = 384
    hflip: bool = True
    blur_p: float = 0.1
    sharpness_p: float = 0.1

    def __call__(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        image = resize(image, self.resize)
        top, left = rng.randint(0, self.resize - self.crop), rng.randint(0, self.resize - self.crop)
        image = image[:, top : top + self.crop, left : left + self.crop]
        if self.hflip and rng.random() < 0.5:
            image = image.flip(-1)
        if rng.random() < self.blur_p:
            image = gaussian_blur(image, rng.uniform(*BLUR_SIGMA))
        if rng.random() < self.sharpness_p:
            image = adjust_sharpness(image, SHARPNESS)
        return image


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std, on whatever device `images` is."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return images.float().div_(255.0).sub_(mean).div_(std)
