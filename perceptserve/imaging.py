"""Decoding untrusted image bytes, numpy and Pillow only (this runs inside Triton's python
backend, and in the clients for their overlays, so both see the same upright pixels).

- The bytes are a PNG, JPEG or WebP file, or that file as base64 text, plain or as a
  `data:image/...;base64,` URI: clients that speak only JSON (curl, browsers, KServe v2 clients
  without Triton's binary extension) have nothing but strings for BYTES tensors.
- The size is read from the header and checked against the pixel limit *before* any pixel is
  decoded, so a decompression bomb costs a header parse, not gigabytes of memory.
- The EXIF orientation is applied (as cv2.imread, browsers and labelling tools do): a phone's
  portrait photo is segmented upright, and masks and prompts are in the upright image's pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from perceptserve.errors import InvalidRequest

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# Modes that convert to RGB without losing meaning (16-bit and float images would be clipped).
CONVERTIBLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1")
# base64 text (standard or URL-safe alphabet, whitespace ignored), and the data URI prefix.
BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")
DATA_URI = re.compile(rb"data:image/[\w.+-]+;base64,", re.IGNORECASE)
WHITESPACE = b" \t\r\n\f\v"
URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class ImageError(InvalidRequest):
    """Bytes that are not an acceptable image; the message names the problem."""


def image_file_bytes(data: bytes) -> bytes:
    """The image file in `data`: what base64 text (plain or a `data:image/...;base64,` URI)
    decodes to, else the bytes themselves. A binary file is never all base64 characters."""
    text = data.strip(WHITESPACE)
    if text[:5].lower() == b"data:":
        uri = DATA_URI.match(text)
        if uri is None:
            raise ImageError(f"image data URI must start data:image/<type>;base64, got {text[:40]!r}")
        text = text[uri.end() :]
    elif not BASE64_TEXT.fullmatch(text):
        return data
    try:
        return base64.b64decode(text.translate(URL_SAFE_TO_STANDARD, WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image is base64 text that does not decode ({len(data)} bytes): {exc}") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG / JPEG / WebP bytes, or their base64 text -> HWC uint8 RGB array, upright by the
    image's EXIF orientation."""
    if not data:
        raise ImageError("image is empty (0 bytes)")
    data = image_file_bytes(data)
    if not data:
        raise ImageError("image is empty (base64 text of 0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"image bytes are not a PNG, JPEG or WebP image, nor base64 text of one ({len(data)} bytes, "
            f"starting {data[:8]!r})"
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
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:
        raise ImageError(f"image is truncated or corrupt: {exc}") from None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """HWC uint8 RGB -> PNG bytes (lossless, so the server sees the caller's exact pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
