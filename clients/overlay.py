"""Pictures of results: the photo with the mask tinted and the prompts drawn on it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)  # the official notebooks' blue
POINT_COLOURS = {1: (0, 200, 0), 0: (230, 0, 0)}


def draw_overlay(
    image: np.ndarray, mask: np.ndarray, points=None, labels=None, box=None, alpha: float = 0.55
) -> Image.Image:
    """HWC uint8 RGB photo + [H, W] bool mask -> RGB picture."""
    tinted = image.astype(np.float32)
    tinted[mask] = (1 - alpha) * tinted[mask] + alpha * MASK_COLOUR
    picture = Image.fromarray(tinted.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(4, round(max(image.shape[:2]) / 100))
    if points is not None:
        for (x, y), label in zip(np.asarray(points).reshape(-1, 2), np.asarray(labels).reshape(-1), strict=True):
            colour = POINT_COLOURS.get(int(label), (255, 255, 0))
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255), width=2
            )
    if box is not None:
        draw.rectangle(np.asarray(box, dtype=float).reshape(4).tolist(), outline=(0, 255, 0), width=max(2, radius // 2))
    return picture


def draw_masks(image: np.ndarray, masks, alpha: float = 0.5, seed: int = 0) -> Image.Image:
    """HWC uint8 RGB photo + [H, W] bool masks -> RGB picture, each mask in its own colour
    (largest first, so small masks stay visible on top)."""
    colours = np.random.default_rng(seed).integers(40, 256, size=(len(masks), 3)).astype(np.float32)
    tinted = image.astype(np.float32)
    for index in np.argsort([-int(mask.sum()) for mask in masks]):
        mask = masks[index]
        tinted[mask] = (1 - alpha) * tinted[mask] + alpha * colours[index]
    return Image.fromarray(tinted.round().astype(np.uint8))


def save_mask(mask: np.ndarray, path) -> None:
    """[H, W] bool -> PNG with 0 and 255."""
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def draw_instances(image: np.ndarray, masks: list[np.ndarray], boxes: list, alpha: float = 0.5) -> Image.Image:
    """The image with each instance mask tinted in its own colour and its box drawn."""
    from .dataset import palette

    colours = palette(len(masks) + 1)[1:].astype(np.float32)
    tinted = image.astype(np.float32)
    for mask, colour in zip(masks, colours, strict=True):
        tinted[mask] = (1 - alpha) * tinted[mask] + alpha * colour
    picture = Image.fromarray(tinted.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for (x, y, w, h), colour in zip(boxes, colours, strict=True):
        draw.rectangle([x, y, x + w, y + h], outline=tuple(int(c) for c in colour), width=2)
    return picture


def draw_pose(image: np.ndarray, keypoints: np.ndarray, skeleton, threshold: float) -> Image.Image:
    """The image with the keypoints scoring at least `threshold` and the skeleton between them."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    radius = max(2, round(max(image.shape[:2]) / 120))
    visible = keypoints[:, 2] >= threshold
    for first, second in skeleton:  # COCO's pairs are 1-based
        if visible[first - 1] and visible[second - 1]:
            draw.line([*keypoints[first - 1, :2], *keypoints[second - 1, :2]], fill=(0, 200, 255), width=2)
    for x, y, _ in keypoints[visible]:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 60, 0), outline=(255, 255, 255))
    return picture
