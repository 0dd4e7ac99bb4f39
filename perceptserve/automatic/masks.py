"""Operations on a batch of masks, vectorised in numpy or delegated to well-kept libraries:
torchvision's NMS and OpenCV's connected components. Each reproduces the step
of `SamAutomaticMaskGenerator` named in its docstring."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms


def stability_scores(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """`calculate_stability_score`: IoU of the masks thresholded at threshold +- offset ([K])."""
    high = np.count_nonzero(logits > threshold + offset, axis=(1, 2))
    low = np.count_nonzero(logits > threshold - offset, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (high / low).astype(np.float32)


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """`batched_mask_to_box`: [K, H, W] bool -> [K, 4] int64 x0, y0, x1, y1 (inclusive pixel
    indices of the last row and column; zeros for an empty mask)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = masks.shape[1:]
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = height - 1 - rows[:, ::-1].argmax(axis=1), width - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([left, top, right, bottom], axis=1).astype(np.int64)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def near_crop_edge(boxes: np.ndarray, crop_box: list[int], image_box: list[int], tolerance: float = 20.0) -> np.ndarray:
    """`is_box_near_crop_edge`: boxes (image frame) touching a crop edge that is not the image's."""
    boxes = boxes.astype(np.float32)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float32)) <= tolerance
    near_image = np.abs(boxes - np.asarray(image_box, np.float32)) <= tolerance
    return np.any(near_crop & ~near_image, axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by torchvision's box NMS, highest score first (one category, as the official
    generator calls it)."""
    boxes_t = torch.as_tensor(boxes).float()
    keep = batched_nms(boxes_t, torch.as_tensor(scores), torch.zeros(len(boxes_t)), iou_threshold)
    return keep.numpy()


def remove_small_regions(mask: np.ndarray, min_area: int, holes: bool) -> tuple[np.ndarray, bool]:
    """`remove_small_regions`: fill holes (or drop islands) under `min_area` pixels, 8-connected;
    when every island is small the largest stays. Returns (mask, changed)."""
    working = (mask ^ holes).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) == 0:
        return mask, False
    if holes:
        return np.isin(labels, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, count), small)
    if len(keep) == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True
