"""Masks in the formats labelling tools read, usable from Python and behind
`perceptserve segment --out FILE [--format ...]` and `perceptserve segment-all`:

- `png`: 0/255 greyscale, one mask (as before);
- `rle`: a JSON list of COCO RLEs (`{"size": [H, W], "counts": str}`; holes survive);
- `polygons`: a JSON list, per mask, of polygons `{"exterior": [[x, y], ...], "holes": [...]}`
  in image pixels (OpenCV's two-level contours: outer boundaries and the holes inside them);
- `coco`: a COCO instances file (`pycocotools.coco.COCO` loads it), category "object", scores kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from perceptserve.automatic import rle

from .errors import ClientError
from .overlay import save_mask

FORMATS = ("png", "rle", "polygons", "coco")
SUFFIXES = {".png": "png", ".rle.json": "rle", ".polygons.json": "polygons", ".coco.json": "coco"}
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def format_for(path: Path, explicit: str | None = None) -> str:
    """`explicit`, else the one the file name says (`.png`, `.rle.json`, `.polygons.json`, `.coco.json`)."""
    if explicit:
        return explicit
    name = Path(path).name.lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise ClientError(
        f"cannot tell the mask format from {path}: name it *.png, *.rle.json, *.polygons.json or "
        "*.coco.json, or give --format"
    )


def polygons(mask: np.ndarray) -> list[dict]:
    """[H, W] bool -> its outer contours, each with the holes inside it, as (x, y) pixel lists."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    parents = hierarchy[0][:, 3]
    points = [contour.reshape(-1, 2).tolist() for contour in contours]
    return [
        {"exterior": points[i], "holes": [points[j] for j in np.flatnonzero(parents == i)]}
        for i in np.flatnonzero(parents < 0)
    ]


def mask_box(mask: np.ndarray) -> list[int]:
    """XYWH box as the official records give it (inclusive last pixel: width = x1 - x0)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]


def records_from_masks(masks: np.ndarray, scores) -> list[dict]:
    """[N, H, W] bool masks and their scores -> records shaped like the generator's."""
    encoded = rle.encode(masks)
    return [
        {"segmentation": one, "area": int(mask.sum()), "bbox": mask_box(mask), "predicted_iou": float(score)}
        for one, mask, score in zip(encoded, masks, np.asarray(scores).reshape(-1), strict=True)
    ]


def coco_document() -> dict:
    return {"images": [], "annotations": [], "categories": [CATEGORY]}


def add_image(document: dict, file_name: str, size: tuple[int, int], records: list[dict]) -> None:
    """Append one image and its records as annotations (ids continue from the document's)."""
    image_id = max((image["id"] for image in document["images"]), default=0) + 1
    next_id = max((a["id"] for a in document["annotations"]), default=0) + 1
    document["images"].append({"id": image_id, "file_name": file_name, "height": int(size[0]), "width": int(size[1])})
    for offset, record in enumerate(records):
        annotation = {
            "id": next_id + offset,
            "image_id": image_id,
            "category_id": CATEGORY["id"],
            "iscrowd": 0,
            "score": record["predicted_iou"],
            **record,
        }
        document["annotations"].append(annotation)


def write_json(path: Path, value) -> None:
    """Write atomically (a crash never leaves half a file, which resume would then trust)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def write_masks(path: Path, kind: str, masks: np.ndarray, scores, image_name: str) -> None:
    """[N, H, W] bool masks of one image -> `path` in format `kind`."""
    if kind == "png":
        if len(masks) != 1:
            raise ClientError(f"a PNG holds one mask, got {len(masks)}; write rle, polygons or coco")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mask(masks[0], path)
    elif kind == "rle":
        write_json(path, rle.encode(masks))
    elif kind == "polygons":
        write_json(path, [polygons(mask) for mask in masks])
    elif kind == "coco":
        document = coco_document()
        add_image(document, image_name, masks.shape[1:], records_from_masks(masks, scores))
        write_json(path, document)
    else:
        raise ClientError(f"unknown mask format {kind!r}; choose one of {', '.join(FORMATS)}")
