"""COCO annotation files for a DatasetDM dataset: `annotations/instances.json` (instance masks as
RLE, boxes, areas, scores; categories from the run's class names) and
`annotations/person_keypoints.json` (one person per image, COCO's 17 keypoints), both loadable
by `pycocotools.coco.COCO`.

They are kept consistent with a dataset's manifest by construction: each finished item's COCO
record is a file of its own (`annotations/items/{stem}.json`), written with the item's other files
before its manifest line, and the two COCO files are rebuilt from the records of the items the
manifest lists (`write`), atomically. Ids are given in the order of the records passed (a
dataset passes them by seed), so a resumed run writes the same files as an uninterrupted one.
`merge` joins COCO files of several datasets (shards) with fresh ids.

    record = item_record("Image/cat_7.jpg", annotation, (512, 512), keypoint_threshold=0.2)
    write_record(root / record_path("cat_7"), record)
    write(root, [records...], class_names)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from perceptserve.datasetdm.coco_names import KEYPOINTS, SKELETON

from .datasetdm import Annotation

INSTANCES = "annotations/instances.json"
PERSON_KEYPOINTS = "annotations/person_keypoints.json"
RECORDS = "annotations/items"
KEYPOINT_THRESHOLD = 0.2  # DatasetDM's: a keypoint scoring at least this is visible (v = 2)
PERSON = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(KEYPOINTS),
    "skeleton": [list(pair) for pair in SKELETON],
}


def record_path(stem: str) -> str:
    return f"{RECORDS}/{stem}.json"


def item_record(file_name: str, annotation: Annotation, size: Sequence[int], keypoint_threshold: float) -> dict:
    """One image's COCO content, ids left out: {"image": ..., "instances": [...], "person": ... | None};
    `size` is (height, width). Instances and keypoints are there where their tasks were served."""
    from pycocotools import mask as rle

    height, width = (int(side) for side in size)
    record: dict = {"image": {"file_name": file_name, "height": height, "width": width}}
    if annotation.instances is not None:
        record["instances"] = [
            {
                "category_id": instance.category,
                "segmentation": instance.rle,
                "area": float(rle.area({"size": instance.rle["size"], "counts": instance.rle["counts"].encode()})),
                "bbox": [round(v, 2) for v in instance.box],
                "score": round(instance.score, 5),
                "iscrowd": 0,
            }
            for instance in annotation.instances
        ]
    if annotation.keypoints is not None:
        record["person"] = person(annotation.keypoints, keypoint_threshold, (height, width))
    return record


def person(keypoints, threshold: float, size: tuple[int, int]) -> dict:
    """COCO's person annotation from (17, 3) keypoints (x, y, score): v = 2 at or above the
    threshold, else 0 with x = y = 0 (COCO's convention for an unlabelled keypoint); the box
    around the visible keypoints (the whole image when none is)."""
    flat, visible = [], []
    for x, y, score in keypoints.tolist():
        if score >= threshold:
            flat += [round(x, 2), round(y, 2), 2]
            visible.append((x, y))
        else:
            flat += [0, 0, 0]
    if visible:
        xs, ys = [p[0] for p in visible], [p[1] for p in visible]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    else:
        box = [0.0, 0.0, float(size[1]), float(size[0])]
    box = [round(float(v), 2) for v in box]
    scores = [s for *_, s in keypoints.tolist()]
    return {
        "category_id": PERSON["id"],
        "keypoints": flat,
        "num_keypoints": len(visible),
        "bbox": box,
        "area": round(box[2] * box[3], 2),
        "score": round(float(sum(scores) / len(scores)), 5),
        "iscrowd": 0,
    }


def write_record(path: Path, record: dict) -> None:
    _write_json(path, record)


def read_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def build(records: Sequence[dict], class_names: Sequence[str]) -> tuple[dict | None, dict | None]:
    """(instances.json, person_keypoints.json) contents from item records in order; None for a
    file whose task no record has."""
    images = [dict(record["image"], id=index) for index, record in enumerate(records, start=1)]
    instances = None
    if any("instances" in record for record in records):
        annotations = [
            dict(annotation, id=0, image_id=image["id"])
            for image, record in zip(images, records, strict=True)
            for annotation in record.get("instances", [])
        ]
        categories = [{"id": k, "name": name, "supercategory": ""} for k, name in enumerate(class_names, start=1)]
        instances = {"images": images, "annotations": _numbered(annotations), "categories": categories}
    keypoints = None
    if any("person" in record for record in records):
        annotations = [
            dict(record["person"], id=0, image_id=image["id"])
            for image, record in zip(images, records, strict=True)
            if "person" in record
        ]
        keypoints = {"images": images, "annotations": _numbered(annotations), "categories": [PERSON]}
    return instances, keypoints


def write(root: Path, records: Sequence[dict], class_names: Sequence[str]) -> list[Path]:
    """Rebuild the dataset's COCO files from `records` (atomically); return those written."""
    written = []
    for name, content in zip((INSTANCES, PERSON_KEYPOINTS), build(records, class_names), strict=True):
        if content is not None:
            _write_json(Path(root) / name, content)
            written.append(Path(root) / name)
    return written


def merge(contents: Sequence[dict]) -> dict:
    """One COCO file from several with the same categories (shards of one run), images and
    annotations renumbered in the order given."""
    if any(c["categories"] != contents[0]["categories"] for c in contents):
        raise ValueError("COCO files with different categories cannot be merged")
    images, annotations = [], []
    for content in contents:
        new_ids = {}
        for image in content["images"]:
            new_ids[image["id"]] = len(images) + 1
            images.append(dict(image, id=new_ids[image["id"]]))
        annotations += [dict(a, image_id=new_ids[a["image_id"]]) for a in content["annotations"]]
    return {"images": images, "annotations": _numbered(annotations), "categories": contents[0]["categories"]}


def _numbered(annotations: list[dict]) -> list[dict]:
    return [dict(annotation, id=index) for index, annotation in enumerate(annotations, start=1)]


def _write_json(path: Path, content: dict) -> None:
    """Write whole or not at all: a temporary file renamed over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, separators=(",", ":")))
    os.replace(temporary, path)
