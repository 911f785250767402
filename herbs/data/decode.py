"""Opening image bytes: the one place that applies the pixel limit and says what bytes that
are no usable image are, for every caller (shard writer, training and evaluation streams,
image files for predict, eval and heatmap).

The limit is checked on the header, before any pixel is decoded, so a decompression bomb (a
small file of a huge image) costs nothing. PIL's own process-wide limit is switched off in
favour of this one: it would refuse, or warn about, images under a limit the user raised.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from herbs.config import DataConfig

DEFAULT_MAX_PIXELS = DataConfig.max_image_pixels
LIMIT_SETTING = "data.max_image_pixels, or --max-image-pixels"
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}

Image.MAX_IMAGE_PIXELS = None


class DecodeError(ValueError):
    """Bytes that are not a usable image. The message describes the bytes as a noun phrase
    ("a truncated PNG", "12 bytes with no known image header"), for the caller's sentence."""


def sniff(data: bytes) -> str:
    """The format a file's first bytes announce, or "" when they match none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in MAGIC.items() if data.startswith(magic)), "")


def damaged(fmt: str, err: Exception) -> str:
    if "truncated" in str(err).lower():
        return f"a truncated {fmt}"
    detail = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
    return f"a damaged {fmt} ({detail})"


def unidentified(data: bytes) -> str:
    if not data:
        return "an empty file (0 bytes)"
    fmt = sniff(data)
    if fmt:
        return f"a damaged {fmt} ({len(data)} bytes; its header cannot be read)"
    return f"{len(data)} bytes with no known image header"


@contextlib.contextmanager
def opened(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """PIL's lazy image of `data` (header read, pixels not yet decoded) when it has at most
    `max_pixels` pixels. Decoding errors inside the block, and unreadable headers, become a
    `DecodeError` describing the bytes; never the library's text about a BytesIO object."""
    fmt = sniff(data) or "image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or fmt
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"a {width}x{height} {fmt} of {width * height:,} pixels, over the limit of "
                                  f"{max_pixels:,} ({LIMIT_SETTING})")
            yield image
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(unidentified(data)) from None
    except (OSError, SyntaxError, ValueError, RuntimeError, EOFError) as err:
        raise DecodeError(damaged(fmt, err)) from None
