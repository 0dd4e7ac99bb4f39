"""Image decoding (`perceptserve.imaging`), what every served image input and the clients'
overlays go through: base64 text accepted like the file itself, EXIF orientation applied."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from perceptserve.imaging import ImageError, decode_image, encode_png

LIMIT = 10**8
# What a viewer does with the stored pixels for each EXIF orientation (EXIF 2.3, tag 0x0112),
# written out independently of Pillow's table.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # flipped
    5: lambda a: a.transpose(1, 0, 2),  # mirrored and rotated
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise: a phone's portrait shot
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG storing `pixels` with the EXIF orientation tag set, as a camera writes it."""
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def stored_pixels(data: bytes) -> np.ndarray:
    """The pixels as stored, orientation ignored."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(pixels, orientation):
    data = jpeg_with_orientation(pixels, orientation)
    decoded = decode_image(data, LIMIT)
    assert decoded.shape == ((45, 30, 3) if orientation >= 5 else (30, 45, 3))
    np.testing.assert_array_equal(decoded, UPRIGHT[orientation](stored_pixels(data)))


@pytest.mark.parametrize(
    "wrap",
    [
        base64.b64encode,
        base64.urlsafe_b64encode,
        base64.encodebytes,  # MIME: lines of 76 characters
        lambda data: b"data:image/png;base64," + base64.b64encode(data),
        lambda data: b"  DATA:image/webp;base64," + base64.b64encode(data) + b"\n",
    ],
    ids=["plain", "url-safe", "wrapped lines", "data URI", "data URI, case and whitespace"],
)
def test_base64_text_decodes_like_the_file(pixels, wrap):
    np.testing.assert_array_equal(decode_image(wrap(encode_png(pixels)), LIMIT), pixels)


def test_base64_keeps_the_exif_orientation(pixels):
    data = jpeg_with_orientation(pixels, 6)
    np.testing.assert_array_equal(decode_image(base64.b64encode(data), LIMIT), decode_image(data, LIMIT))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"iVBORw0KGgo", "base64 text that does not decode"),
        (b"data:image/png;base64,iVBOR w0K!", "base64 text that does not decode"),
        (b"data:text/plain;base64,aGVsbG8=", "must start data:image/<type>;base64,"),
        (b"data:image/png,rawbytes", "must start data:image/<type>;base64,"),
        (base64.b64encode(b"GIF89a" + bytes(20)), "not a PNG, JPEG or WebP"),
        (b"   \n", "not a PNG, JPEG or WebP"),
        (b"data:image/png;base64,", "image is empty"),
    ],
)
def test_bad_base64_is_refused_with_the_reason(data, message):
    with pytest.raises(ImageError, match=message.replace("(", r"\(")):
        decode_image(data, LIMIT)


def test_the_pixel_limit_applies_to_base64_from_the_header(pixels):
    with pytest.raises(ImageError, match="1350 pixels, over the server's limit of 1000"):
        decode_image(base64.b64encode(encode_png(pixels)), 1000)
