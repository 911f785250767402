"""Decoding and the published augmentation on uint8 tensors, against the original PIL/torchvision chain."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F2
from PIL import Image

from helpers.data import bomb_png, jpeg, photo
from herbs.data.decode import DecodeError
from herbs.data.transforms import EvalTransform, TrainTransform, adjust_sharpness, decode_image, gaussian_blur, normalize

ORIGINAL_EVAL = T.Compose([T.Resize((510, 510), interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(384)])


@pytest.mark.parametrize("size, seed", [((500, 375), 0), ((500, 375), 1), ((375, 500), 2), ((500, 333), 3), ((472, 500), 4)])
def test_eval_transform_matches_the_original_pil_chain(size, seed):
    data = jpeg(*size, seed=seed)
    expected = torch.from_numpy(np.array(ORIGINAL_EVAL(Image.open(io.BytesIO(data)).convert("RGB")))).permute(2, 0, 1)
    ours = EvalTransform(510, 384)(decode_image(data, size_hint=510))
    assert ours.shape == (3, 384, 384) and ours.dtype == torch.uint8
    assert (ours.int() - expected.int()).abs().max() <= 1


def test_train_transform_is_a_function_of_its_rng():
    image = decode_image(jpeg(120, 90, seed=5))
    transform = TrainTransform(resize=100, crop=80, blur_p=0.5, sharpness_p=0.5)
    outputs = [transform(image, random.Random(i)) for i in range(12)]
    assert all(o.shape == (3, 80, 80) and o.dtype == torch.uint8 for o in outputs)
    assert all(torch.equal(transform(image, random.Random(i)), o) for i, o in enumerate(outputs))
    assert len({o.numpy().tobytes() for o in outputs}) == 12


def test_train_transform_crops_and_flips_the_resized_image():
    image = decode_image(jpeg(120, 90, seed=6))
    resized = F2.resize(image, [100, 100], antialias=True)
    crops = {resized[:, t : t + 80, l : l + 80].numpy().tobytes() for t in range(21) for l in range(21)}
    flipped = {resized[:, t : t + 80, l : l + 80].flip(-1).numpy().tobytes() for t in range(21) for l in range(21)}
    plain = TrainTransform(resize=100, crop=80, hflip=True, blur_p=0.0, sharpness_p=0.0)
    outputs = [plain(image, random.Random(i)).numpy().tobytes() for i in range(20)]
    assert all(o in crops | flipped for o in outputs)
    assert any(o in flipped and o not in crops for o in outputs)
    never_flipped = TrainTransform(resize=100, crop=80, hflip=False, blur_p=0.0, sharpness_p=0.0)
    assert all(never_flipped(image, random.Random(i)).numpy().tobytes() in crops for i in range(20))


# What the train transform hands them: a decoded image (height-width-channel memory), a crop view
# of a resized one, a flipped crop; and a channel-first tensor.
IMAGES = {
    "decoded": lambda: decode_image(jpeg(64, 48, seed=7)),
    "crop": lambda: F2.resize(decode_image(jpeg(64, 48, seed=8)), [60, 60], antialias=True)[:, 5:50, 7:47],
    "flipped crop": lambda: decode_image(jpeg(64, 48, seed=9))[:, 2:40, 3:60].flip(-1),
    "channels first": lambda: torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("layout", IMAGES)
@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0, 5.0])
def test_blur_is_torchvisions_within_one_level(sigma, layout):
    image = IMAGES[layout]()
    blurred = gaussian_blur(image, sigma)
    assert blurred.shape == image.shape and blurred.dtype == torch.uint8
    assert (blurred.int() - F2.gaussian_blur(image, [5, 5], [sigma, sigma]).int()).abs().max() <= 1


@pytest.mark.parametrize("layout", IMAGES)
def test_sharpness_is_torchvisions_within_one_level(layout):
    image = IMAGES[layout]()
    sharpened = adjust_sharpness(image, 1.5)
    assert sharpened.shape == image.shape and sharpened.dtype == torch.uint8
    assert (sharpened.int() - F2.adjust_sharpness(image, 1.5).int()).abs().max() <= 1


def test_normalize_equals_totensor_then_normalize():
    image = decode_image(jpeg(40, 30, seed=8))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(image.permute(1, 2, 0).numpy())))
    ours = normalize(image.unsqueeze(0), mean, std)
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 30, 40)
    torch.testing.assert_close(ours[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "PNG")])
def test_decode_gives_rgb_for_any_mode(mode, fmt):
    out = io.BytesIO()
    photo(20, 10, seed=9).convert(mode).save(out, format=fmt)
    image = decode_image(out.getvalue())
    assert image.shape == (3, 10, 20) and image.dtype == torch.uint8


def test_decode_scales_16_bit_pngs_to_8_bits():
    out = io.BytesIO()
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(out, format="PNG")
    image = decode_image(out.getvalue())
    assert image.dtype == torch.uint8 and image[0, 0].tolist() == [0, 100, 255]


def test_decode_applies_exif_orientation_like_cv2_imread():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_image(jpeg(40, 30, seed=1, exif=exif)).shape == (3, 40, 30)


def test_large_jpegs_are_decoded_at_reduced_scale_but_never_below_the_hint():
    data = jpeg(1700, 1200, seed=10)
    image = decode_image(data, size_hint=510)
    assert image.shape == (3, 600, 850)  # libjpeg's 1/2 scale: 1/4 would be under 510
    assert decode_image(data).shape == (3, 1200, 1700)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("data, described", [
    (b"", "an empty file (0 bytes)"),
    (b"garbage" * 20, "140 bytes with no known image header"),
    (jpeg(seed=11)[:300], "a truncated JPEG"),
    (png(photo(60, 40, seed=2))[:2000], "a truncated PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "a damaged PNG (38 bytes; its header cannot be read)"),
], ids=["empty", "garbage", "cut-jpeg", "cut-png", "bad-png-header"])
def test_undecodable_bytes_are_described_not_the_library_objects(data, described):
    with pytest.raises(DecodeError) as err:
        decode_image(data)
    assert str(err.value) == described


def test_decompression_bombs_are_refused_from_their_header_at_a_configurable_limit():
    with pytest.raises(DecodeError) as err:
        decode_image(bomb_png(), size_hint=510)
    assert str(err.value) == ("a 20000x20000 PNG of 400,000,000 pixels, over the limit of 178,956,970 "
                              "(data.max_image_pixels, or --max-image-pixels)")
    with pytest.raises(DecodeError, match="a 40x30 JPEG of 1,200 pixels, over the limit of 1,199"):
        decode_image(jpeg(40, 30), max_pixels=1199)
    assert decode_image(jpeg(40, 30), max_pixels=1200).shape == (3, 30, 40)
