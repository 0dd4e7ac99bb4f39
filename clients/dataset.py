"""A DatasetDM-layout dataset on disk, written one finished item at a time so that a run can be
interrupted and resumed without redoing or losing finished items.

    OUT/Image/{class}_{seed}.jpg     the generated image (DatasetDM's layout)
    OUT/Mask/{class}_{seed}.png      class indices (0 background, k the k-th class name)
    OUT/Depth/{class}_{seed}.png     depth / max * 255, 8-bit (DatasetDM: / max * 256), if served
    OUT/Preview/{class}_{seed}.jpg   the image beside its coloured mask
    OUT/Preview/{class}_{seed}_instances.jpg, _pose.jpg   where those tasks are served
    OUT/annotations/instances.json, person_keypoints.json   COCO files (`coco.py`), rebuilt
                                     from the items in the manifest
    OUT/manifest.jsonl               one JSON line per finished item

An item's files are written first and its manifest line last (flushed and synced), so the
manifest lists only complete items; a torn last line from a killed run is ignored. `{class}` is
the first class name (DatasetDM names files by the class its prompt is about).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import coco
from .datasetdm import Annotation
from .errors import ClientError
from .overlay import draw_instances, draw_pose

MANIFEST = "manifest.jsonl"
# What must match for a resumed run to continue a dataset rather than mix two.
RUN_KEYS = (
    "prompt",
    "negative_prompt",
    "classes",
    "steps",
    "guidance",
    "height",
    "width",
    "max_instances",
    "score_threshold",
    "keypoint_threshold",
)


def palette(count: int) -> np.ndarray:
    """PASCAL VOC's colour map (DatasetDM's VOC masks use it): (count, 3) uint8, 0 black."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


def coloured(class_map: np.ndarray) -> np.ndarray:
    return palette(int(class_map.max()) + 1)[class_map]


def preview(image: np.ndarray, class_map: np.ndarray) -> Image.Image:
    """The image beside the image blended with its coloured mask."""
    blend = (0.5 * image + 0.5 * coloured(class_map)).astype(np.uint8)
    return Image.fromarray(np.concatenate([image, blend], axis=1))


def depth_png(depth: np.ndarray) -> Image.Image:
    scaled = depth / max(float(depth.max()), 1e-12) * 255
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def file_stem(class_name: str, seed: int) -> str:
    """`{class}_{seed}`, the class name made safe as a file name."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', class_name).strip('-') or 'class'}_{seed}"


@dataclass
class RunSpec:
    prompt: str
    classes: list[str]
    steps: int
    guidance: float
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    max_instances: int | None = None  # None: the server's default (DatasetDM's 20)
    score_threshold: float | None = None  # None: the server's default (0.4)
    keypoint_threshold: float = coco.KEYPOINT_THRESHOLD
    models: dict[str, list[str]] = field(default_factory=dict)  # served model -> versions


class Dataset:
    def __init__(self, root: Path, spec: RunSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.done: dict[int, dict] = {}
        self._records: dict[int, dict] = {}  # seed -> COCO record, read from disk once
        manifest = self.root / MANIFEST
        if manifest.exists():
            for line in manifest.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by an interrupted run: that item is redone
                self._check_same_run(entry)
                if all((self.root / path).exists() for path in entry["files"].values()):
                    self.done[entry["seed"]] = entry
        self.write_coco()  # a run killed between an item's manifest line and the rebuild

    def _check_same_run(self, entry: dict) -> None:
        ours = asdict(self.spec)
        different = [key for key in RUN_KEYS if entry.get(key) != ours[key]]
        if different:
            raise ClientError(
                f"{self.root} holds a dataset made with other settings ({', '.join(different)} differ): "
                "give another --out, or the same settings to resume it"
            )

    def pending(self, seeds: list[int]) -> list[int]:
        return [seed for seed in seeds if seed not in self.done]

    def add(self, seed: int, image: np.ndarray, annotation: Annotation) -> dict:
        """Write one item's files (its COCO record among them), then its manifest line; return
        the entry. `write_coco` brings the COCO files up to date."""
        stem = file_stem(self.spec.classes[0], seed)
        files = {"image": f"Image/{stem}.jpg", "mask": f"Mask/{stem}.png", "preview": f"Preview/{stem}.jpg"}
        pictures = {"mask": Image.fromarray(annotation.class_map.astype(np.uint8))}
        pictures["preview"] = preview(image, annotation.class_map)
        if annotation.depth is not None:
            files["depth"] = f"Depth/{stem}.png"
            pictures["depth"] = depth_png(annotation.depth)
        if annotation.instances is not None:
            files["instances_preview"] = f"Preview/{stem}_instances.jpg"
            masks = [mask_of(instance.rle) for instance in annotation.instances]
            pictures["instances_preview"] = draw_instances(image, masks, [i.box for i in annotation.instances])
        if annotation.keypoints is not None:
            files["pose_preview"] = f"Preview/{stem}_pose.jpg"
            pictures["pose_preview"] = draw_pose(
                image, annotation.keypoints, coco.SKELETON, self.spec.keypoint_threshold
            )
        if annotation.instances is not None or annotation.keypoints is not None:
            files["coco"] = coco.record_path(stem)
        for path in files.values():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.root / files["image"], quality=95)
        for name, picture in pictures.items():
            picture.save(self.root / files[name], quality=90)
        if "coco" in files:
            record = coco.item_record(files["image"], annotation, image.shape[:2], self.spec.keypoint_threshold)
            coco.write_record(self.root / files["coco"], record)
            self._records[seed] = record
        entry = {"seed": seed, **asdict(self.spec), "files": files}
        with open(self.root / MANIFEST, "a") as manifest:
            manifest.write(json.dumps(entry) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        self.done[seed] = entry
        return entry

    def write_coco(self) -> list[Path]:
        """Rebuild the COCO files from the items in the manifest, by seed."""
        seeds = [seed for seed in sorted(self.done) if "coco" in self.done[seed]["files"]]
        for seed in seeds:
            if seed not in self._records:
                self._records[seed] = coco.read_record(self.root / self.done[seed]["files"]["coco"])
        records = [self._records[seed] for seed in seeds]
        return coco.write(self.root, records, self.spec.classes) if records else []


def mask_of(rle: dict) -> np.ndarray:
    """A COCO RLE (counts as text) -> its (H, W) bool mask."""
    from pycocotools import mask

    return mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
