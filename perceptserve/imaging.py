"""Decoding untrusted image bytes, numpy and Pillow only (this runs inside Triton's python
backend).

The size is read from the header and checked against the pixel limit *before* any pixel is
decoded, so a decompression bomb costs a header parse, not gigabytes of memory.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from perceptserve.errors import InvalidRequest

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# Modes that convert to RGB without losing meaning (16-bit and float images would be clipped).
CONVERTIBLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1")


class ImageError(InvalidRequest):
    """Bytes that are not an acceptable image; the message names the problem."""


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG / JPEG / WebP bytes -> HWC uint8 RGB array."""
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"image bytes are not a PNG, JPEG or WebP image ({len(data)} bytes, starting {data[:8]!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageError(f"image header cannot be read: {exc}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(f"image format {image.format} is not accepted; send PNG, JPEG or WebP")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, over the server's limit of "
            f"{max_pixels} pixels (max_image_pixels)"
        )
    if image.mode not in CONVERTIBLE_MODES:
        raise ImageError(f"image mode {image.mode} is not supported; send 8-bit RGB, RGBA or grey")
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"image is truncated or corrupt: {exc}") from None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """HWC uint8 RGB -> PNG bytes (lossless, so the server sees the caller's exact pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
