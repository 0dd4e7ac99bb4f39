"""HQ-SAM's image geometry, numpy and Pillow only: `ResizeLongestSide`, the coordinate
transform and `Sam.postprocess_masks`, as the official predictor applies them.

Shared by the python-backend models, the export's parity check and the client, so that there is
one implementation of each step.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

IMAGE_SIZE = 1024  # the encoder's square input
LOW_RES_MASK_SIZE = 256  # the decoder's logits and the mask prompt


def resized_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """`ResizeLongestSide.get_preprocess_shape`: the longest side to `long_side`, rounded half up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_and_pad(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """HWC uint8 -> (uint8 [1024, 1024, 3] zero-padded bottom-right, resized (h, w)).

    `ResizeLongestSide.apply_image` resizes through torchvision's PIL path, which is
    `PIL.Image.resize(..., BILINEAR)`; calling Pillow directly gives the same pixels.
    """
    new_h, new_w = resized_shape(*image.shape[:2])
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    padded = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    padded[:new_h, :new_w] = resized
    return padded, (new_h, new_w)


def scale_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """`ResizeLongestSide.apply_coords`: (x, y) pixels of the original image -> encoder frame."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w)
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] *= new_w / old_w
    scaled[..., 1] *= new_h / old_h
    return scaled.astype(np.float32)


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bilinear resize (align_corners=False, no antialias)."""
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


@lru_cache(maxsize=64)
def _postprocess_matrix(input_len: int, original_len: int) -> np.ndarray:
    """One axis of `postprocess_masks`: 256 -> 1024, crop to the resized length, -> original.

    Depends on the sizes only, and interactive use sends the same image again and again: built
    once per size (read-only, since it is shared)."""
    to_padded = _bilinear_matrix(LOW_RES_MASK_SIZE, IMAGE_SIZE)[:input_len]
    matrix = (_bilinear_matrix(input_len, original_len) @ to_padded).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upscale_logits(
    low_res_logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
) -> np.ndarray:
    """`Sam.postprocess_masks` on [..., 256, 256] logits -> [..., H, W] logits.

    Both bilinear resizes and the crop are linear maps, so each axis collapses into one
    [out, 256] matrix and the whole step is two matrix products per mask.
    """
    rows = _postprocess_matrix(int(input_size[0]), int(original_size[0]))
    cols = _postprocess_matrix(int(input_size[1]), int(original_size[1]))
    return rows @ low_res_logits.astype(np.float32) @ cols.T
