"""What the benchmark sends: one real photo, made unique per request, and point prompts.

The server's response cache on the encoder is keyed by the preprocessed image, so sending the
same photo twice would time a cache hit, not the encoder. Every image variant carries two small
solid blocks in its top-left corner: one coloured by a per-run random nonce, one by a counter.
A variant is therefore new to the server even when it still holds the cache of an earlier run,
and the blocks (16 px, about 27 px after the resize to 1024) survive the resize.
"""

from __future__ import annotations

import random

import numpy as np
from skimage import data as sample_images

from perceptserve.imaging import encode_png

BLOCK = 16


def sample_photo() -> np.ndarray:
    """skimage's coffee photo, 600x400 RGB: a real image of an ordinary size."""
    return sample_images.coffee()


def _colour(value: int) -> tuple[int, int, int]:
    return value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF


class Workload:
    def __init__(self, image: np.ndarray, nonce: int | None = None) -> None:
        self.image = image
        self.nonce = random.SystemRandom().randrange(1 << 24) if nonce is None else nonce
        self._next = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def variants(self, count: int) -> list[np.ndarray]:
        """`count` images never handed out before in this run."""
        images = []
        for index in range(self._next, self._next + count):
            image = self.image.copy()
            image[:BLOCK, :BLOCK] = _colour(self.nonce)
            image[:BLOCK, BLOCK : 2 * BLOCK] = _colour(index)
            images.append(image)
        self._next += count
        return images

    def png_variants(self, count: int) -> list[bytes]:
        """Encoded as a client would send them (the server decodes PNG / JPEG / WebP)."""
        return [encode_png(image) for image in self.variants(count)]

    def point(self, index: int) -> dict:
        """`predict` arguments: a positive point near the middle, moved a little with `index` so
        that consecutive prompts on one image differ, and one mask (HQ-SAM's recommended setting,
        set explicitly because the official `predict` defaults to three)."""
        height, width = self.size
        x = width * 0.5 + (index % 7 - 3) * 4
        y = height * 0.45 + (index % 5 - 2) * 4
        return {"point_coords": np.array([[x, y]]), "point_labels": np.array([1]), "multimask_output": False}
