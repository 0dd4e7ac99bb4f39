"""Our numpy geometry against the official torch transforms it replaces."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from perceptserve.hqsam.geometry import resize_and_pad, resized_shape, scale_coords, upscale_logits
from perceptserve.hqsam.official import ResizeLongestSide

SIZES = [(512, 512), (400, 600), (480, 640), (1200, 300), (33, 1000), (1024, 1024), (7, 5)]


@pytest.mark.parametrize("size", SIZES)
def test_resize_matches_resize_longest_side(size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = ResizeLongestSide(1024).apply_image(image)
    padded, (h, w) = resize_and_pad(image)
    assert (h, w) == expected.shape[:2]
    assert np.array_equal(padded[:h, :w], expected)
    assert not padded[h:].any() and not padded[:, w:].any()


@pytest.mark.parametrize("size", SIZES)
def test_coords_match_apply_coords(size):
    coords = np.random.default_rng(1).uniform(0, min(size), (3, 5, 2))
    expected = ResizeLongestSide(1024).apply_coords(coords, size)
    assert np.allclose(scale_coords(coords, size), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_upscale_matches_postprocess_masks(size):
    logits = torch.randn(3, 1, 256, 256) * 4
    input_size = resized_shape(*size)
    reference = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    reference = reference[..., : input_size[0], : input_size[1]]
    reference = F.interpolate(reference, size, mode="bilinear", align_corners=False).numpy()
    ours = upscale_logits(logits.numpy(), input_size, size)
    assert ours.shape == (3, 1, *size)
    assert np.abs(ours - reference).max() < 5e-5 * np.abs(reference).max()  # torch computes scales in fp32
    assert (ours > 0).mean() == pytest.approx((reference > 0).mean(), abs=1e-4)
