"""COCO run-length encoding through pycocotools, with `counts` as a str (JSON-ready, as the
official generator's `coco_rle` records hold it). No torch: the clients use it too."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode(masks: np.ndarray) -> list[dict]:
    """[K, H, W] bool -> [{"size": [H, W], "counts": str}]."""
    if len(masks) == 0:
        return []
    rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def _compressed(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def areas(rles: list[dict]) -> np.ndarray:
    """Pixels set in each RLE ([K] int64), without decoding."""
    if not rles:
        return np.zeros(0, np.int64)
    return coco_mask.area([_compressed(rle) for rle in rles]).astype(np.int64)


def decode(rle: dict) -> np.ndarray:
    """A COCO RLE (counts as str or bytes) -> [H, W] bool."""
    return coco_mask.decode(_compressed(rle)).astype(bool)


def ious(first: list[dict], second: list[dict]) -> np.ndarray:
    """[len(first), len(second)] mask IoU, computed on the RLEs."""
    if not first or not second:
        return np.zeros((len(first), len(second)))
    result = coco_mask.iou([_compressed(r) for r in first], [_compressed(r) for r in second], [0] * len(second))
    return np.asarray(result).reshape(len(first), len(second))
