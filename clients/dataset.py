"""A DatasetDM-layout dataset on disk, written one finished item at a time so that a run can be
interrupted and resumed without redoing or losing finished items.

    OUT/Image/{class}_{seed}.jpg     the generated image (DatasetDM's layout)
    OUT/Mask/{class}_{seed}.png      class indices (0 background, k the k-th class name)
    OUT/Depth/{class}_{seed}.png     depth / max * 255, 8-bit (DatasetDM: / max * 256), if served
    OUT/Preview/{class}_{seed}.jpg   the image beside its coloured mask
    OUT/Preview/{class}_{seed}_instances.jpg, _pose.jpg   where those tasks are served
    OUT/annotations/instances.json, person_keypoints.json   COCO files (`coco.py`), rebuilt
                                     from the items in the manifest
    OUT/manifest.jsonl               one JSON line per finished item (its seed, prompt, class,
                                     files and the run's settings); manifest-I-of-N.jsonl for
                                     shard I of N, so that shards can share a folder

An item's files are written under temporary names, synced and renamed, and its manifest line is
appended last (flushed and synced), so the manifest lists only complete items whatever order
items finish in; a torn last line from a killed run is ignored. `{class}` is the class the
item's prompt is about (DatasetDM names files so), `--classes`' first for a plain prompt list.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import coco
from .datasetdm import Annotation
from .errors import ClientError
from .overlay import draw_instances, draw_pose
from .prompt_lists import PromptList
from .shards import MANIFEST as MANIFEST  # where callers have always found it
from .shards import Shard

# What must match for a resumed run to continue a dataset rather than mix two.
RUN_KEYS = (
    "prompts",
    "negative_prompt",
    "classes",
    "steps",
    "guidance",
    "height",
    "width",
    "max_instances",
    "score_threshold",
    "keypoint_threshold",
    "models",
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
    """What makes a dataset one run. `RUN_KEYS` must match for a resumed run to continue it, and
    for shards to be merged; `seeds` and `shard` place this worker's items in the whole run
    (merge checks that the shards cover it)."""

    prompts: PromptList
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
    seeds: tuple[int, int] | None = None  # the whole run's seeds, first and past-the-last
    shard: Shard = field(default_factory=Shard)

    def record(self) -> dict:
        """The run's part of every manifest line."""
        return {
            "prompts": self.prompts.digest,
            "negative_prompt": self.negative_prompt,
            "classes": self.classes,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "max_instances": self.max_instances,
            "score_threshold": self.score_threshold,
            "keypoint_threshold": self.keypoint_threshold,
            "models": self.models,
            "seeds": list(self.seeds) if self.seeds else None,
            "shard": [self.shard.index, self.shard.count],
        }


def read_manifest(path: Path) -> list[dict]:
    """The complete lines of a manifest; a line torn by an interrupted run is skipped (redone)."""
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def different_run_keys(entry: dict, reference: dict) -> list[str]:
    return [key for key in RUN_KEYS if entry.get(key) != reference.get(key)]


def save_durably(image: Image.Image, path: Path, **options) -> None:
    """Write to a temporary name, sync, rename: after a crash the file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as file:
        image.save(file, format=Image.registered_extensions()[path.suffix.lower()], **options)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def append_line(path: Path, entry: dict) -> None:
    """One JSON line appended, flushed and synced (the manifest lists only complete items)."""
    with open(path, "a") as manifest:
        manifest.write(json.dumps(entry) + "\n")
        manifest.flush()
        os.fsync(manifest.fileno())


class Dataset:
    """One worker's view of a dataset folder: it reads and appends to its own manifest (shards
    sharing a folder each have one), in whatever order items finish."""

    def __init__(self, root: Path, spec: RunSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.manifest = self.root / spec.shard.manifest_name
        self.done: dict[int, dict] = {}
        self._records: dict[int, dict] = {}  # seed -> COCO record, read from disk once
        if self.manifest.exists():
            ours = spec.record()
            for entry in read_manifest(self.manifest):
                different = different_run_keys(entry, ours)
                if different:
                    raise ClientError(
                        f"{self.root} holds a dataset made with other settings ({', '.join(different)} differ): "
                        "give another --out, or the same settings to resume it"
                    )
                if all((self.root / path).exists() for path in entry["files"].values()):
                    self.done[entry["seed"]] = entry
        self.write_coco()  # a run killed between an item's manifest line and the rebuild

    def pending(self, seeds: list[int]) -> list[int]:
        return [seed for seed in seeds if seed not in self.done]

    def add(self, seed: int, image: np.ndarray, annotation: Annotation) -> dict:
        """Write one item's files (its COCO record among them), then its manifest line; return
        the entry. `write_coco` brings the COCO files up to date."""
        prompt = self.spec.prompts.for_seed(seed)
        stem = file_stem(prompt.class_name, seed)
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
        save_durably(Image.fromarray(image), self.root / files["image"], quality=95)
        for name, picture in pictures.items():
            save_durably(picture, self.root / files[name], quality=90)
        if "coco" in files:
            record = coco.item_record(files["image"], annotation, image.shape[:2], self.spec.keypoint_threshold)
            (self.root / files["coco"]).parent.mkdir(parents=True, exist_ok=True)
            coco.write_record(self.root / files["coco"], record)
            self._records[seed] = record
        entry = {"seed": seed, "prompt": prompt.text, "class": prompt.class_name, **self.spec.record(), "files": files}
        append_line(self.manifest, entry)
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
