"""`SamAutomaticMaskGenerator.generate(image)` with `output_mode="coco_rle"`, over any encoder and
decoder that speak the exported SAM interface (`Models`): in the server they are BLS calls to
`<family>_encoder` and `<family>_decoder`; the steps between them are the official ones, in the
official order, so that the same checkpoint and parameters give the same masks.

Two choices differ from the reference only in cost: masks are filtered by predicted IoU before
their logits are upscaled (the filter reads the decoder's scores only), and the upscale runs in
chunks of bounded memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from perceptserve.hqsam.geometry import resize_and_pad, scale_coords, upscale_logits

from . import grid, masks, rle
from .parameters import GeneratorParameters

MASK_THRESHOLD = 0.0  # `Sam.mask_threshold`


class Models(Protocol):
    def encode(self, image: np.ndarray, input_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """uint8 [1024, 1024, 3] padded image and its resized (h, w) -> the decoder's image inputs."""

    def decode(
        self, features: dict[str, np.ndarray], point_coords: np.ndarray, point_labels: np.ndarray, flags: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """[N, P, 2] coords (encoder frame) and [N, P] labels -> logits [N, C, 256, 256], IoU [N, C]."""


@dataclass
class StageTimes:
    """Seconds spent in the encoder calls, the decoder calls and everything else."""

    encoder: float = 0.0
    decoder: float = 0.0
    postprocess: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([self.encoder, self.decoder, self.postprocess], dtype=np.float64)


@dataclass
class MaskSet:
    """The generator's masks, one row per mask, in the official record order."""

    rles: list[dict] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # x0, y0, x1, y1
    predicted_iou: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stability_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # (x, y), image frame
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # x0, y0, x1, y1

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, keep: np.ndarray) -> MaskSet:
        keep = np.asarray(keep)
        indices = np.flatnonzero(keep) if keep.dtype == bool else keep
        return MaskSet(
            [self.rles[i] for i in indices],
            self.boxes[keep],
            self.predicted_iou[keep],
            self.stability_score[keep],
            self.points[keep],
            self.crop_boxes[keep],
        )

    @staticmethod
    def join(parts: list[MaskSet]) -> MaskSet:
        if not parts:
            return MaskSet()
        return MaskSet(
            [one for part in parts for one in part.rles],
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ARRAYS),
        )

    def areas(self) -> np.ndarray:
        return rle.areas(self.rles)


ARRAYS = ("boxes", "predicted_iou", "stability_score", "points", "crop_boxes")


class Generator:
    def __init__(self, models: Models, parameters: GeneratorParameters, upscale_chunk_pixels: int = 1 << 24) -> None:
        self.models = models
        self.p = parameters
        self.chunk_pixels = upscale_chunk_pixels
        self.times = StageTimes()

    def generate(self, image: np.ndarray) -> MaskSet:
        """HWC uint8 RGB -> the masks `SamAutomaticMaskGenerator.generate` keeps."""
        p = self.p
        height, width = image.shape[:2]
        grids = grid.layer_grids(p.points_per_side, p.crop_n_layers, p.crop_n_points_downscale_factor)
        crops = grid.crop_boxes(height, width, p.crop_n_layers, p.crop_overlap_ratio)
        found = MaskSet.join([self._crop(image, box, grids[layer]) for box, layer in crops])
        started = time.perf_counter()
        if len(crops) > 1 and len(found):
            x0, y0, x1, y1 = found.crop_boxes.T
            smaller_crop_first = 1 / ((x1 - x0) * (y1 - y0)).astype(np.float32)  # float32, as torchvision's box_area
            found = found.take(masks.nms(found.boxes, smaller_crop_first, p.crop_nms_thresh))
        if p.min_mask_region_area > 0 and len(found):
            found = self._remove_small_regions(found, max(p.box_nms_thresh, p.crop_nms_thresh))
        self.times.postprocess += time.perf_counter() - started
        return found

    def _crop(self, image: np.ndarray, crop_box: list[int], unit_points: np.ndarray) -> MaskSet:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        size = crop.shape[:2]
        started = time.perf_counter()
        padded, input_size = resize_and_pad(crop)
        features = self.models.encode(padded, input_size)
        self.times.encoder += time.perf_counter() - started
        points = unit_points * np.array(size)[None, ::-1]
        batch = self.p.points_per_batch
        found = MaskSet.join(
            [
                self._batch(features, points[i : i + batch], input_size, size, crop_box, image.shape[:2])
                for i in range(0, len(points), batch)
            ]
        )
        started = time.perf_counter()
        found = found.take(masks.nms(found.boxes, found.predicted_iou, self.p.box_nms_thresh))
        found.boxes = found.boxes + np.array([x0, y0, x0, y0])
        found.points = found.points + np.array([x0, y0])
        found.crop_boxes = np.tile(np.array(crop_box, dtype=np.int64), (len(found), 1))
        self.times.postprocess += time.perf_counter() - started
        return found

    def _decode(self, features, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """One decoder call on a batch of single-point prompts (plus the padding point that
        `PromptEncoder` adds when there is no box)."""
        n = len(points)
        coords = np.concatenate([scale_coords(points, size)[:, None], np.zeros((n, 1, 2), np.float32)], axis=1)
        labels = np.tile(np.array([[1, -1]], dtype=np.float32), (n, 1))
        flags = {"multimask_output": self.p.multimask_output, "hq_token_only": self.p.hq_token_only}
        started = time.perf_counter()
        logits, iou = self.models.decode(features, coords, labels, flags)
        self.times.decoder += time.perf_counter() - started
        return logits, iou

    def _batch(self, features, points, input_size, size, crop_box, image_size) -> MaskSet:
        p = self.p
        logits, iou = self._decode(features, points, size)
        started = time.perf_counter()
        per_point = logits.shape[1]
        logits = logits.reshape(-1, *logits.shape[2:])
        iou = iou.reshape(-1).astype(np.float32)
        points = np.repeat(points, per_point, axis=0)
        keep = iou > p.pred_iou_thresh if p.pred_iou_thresh > 0 else np.ones(len(iou), bool)
        logits, iou, points = logits[keep], iou[keep], points[keep]

        step = max(1, self.chunk_pixels // (size[0] * size[1]))
        parts = [
            self._masks(
                logits[i : i + step], iou[i : i + step], points[i : i + step], input_size, size, crop_box, image_size
            )
            for i in range(0, len(logits), step)
        ]
        found = MaskSet.join(parts)
        self.times.postprocess += time.perf_counter() - started
        return found

    def _masks(self, logits, iou, points, input_size, size, crop_box, image_size) -> MaskSet:
        """Low-res logits of kept prompts -> stability-filtered, edge-filtered masks as RLE."""
        p = self.p
        full = upscale_logits(logits, input_size, size)
        stability = masks.stability_scores(full, MASK_THRESHOLD, p.stability_score_offset)
        if p.stability_score_thresh > 0:
            keep = stability >= p.stability_score_thresh
            full, iou, points, stability = full[keep], iou[keep], points[keep], stability[keep]
        binary = full > MASK_THRESHOLD
        boxes = masks.boxes_of(binary)
        x0, y0, x1, y1 = crop_box
        height, width = image_size
        keep = ~masks.near_crop_edge(boxes + np.array([x0, y0, x0, y0]), crop_box, [0, 0, width, height])
        binary, boxes, iou, points, stability = binary[keep], boxes[keep], iou[keep], points[keep], stability[keep]
        if (x0, y0, x1, y1) != (0, 0, width, height):
            placed = np.zeros((len(binary), height, width), dtype=bool)
            placed[:, y0:y1, x0:x1] = binary
            binary = placed
        return MaskSet(rle.encode(binary), boxes, iou, stability, points, np.zeros((len(boxes), 4), np.int64))

    def _remove_small_regions(self, found: MaskSet, nms_threshold: float) -> MaskSet:
        """`postprocess_small_regions`: fill small holes, drop small islands, prefer unchanged
        masks in a second NMS, and re-encode the changed masks that survive it."""
        area = self.p.min_mask_region_area
        cleaned, unchanged = [], []
        for encoded in found.rles:
            mask, holes_changed = masks.remove_small_regions(rle.decode(encoded), area, holes=True)
            mask, islands_changed = masks.remove_small_regions(mask, area, holes=False)
            cleaned.append(mask)
            unchanged.append(not (holes_changed or islands_changed))
        cleaned = np.stack(cleaned)
        boxes = masks.boxes_of(cleaned)
        keep = masks.nms(boxes, np.array(unchanged, dtype=np.float32), nms_threshold)
        for index in keep:
            if not unchanged[index]:
                found.rles[index] = rle.encode(cleaned[index : index + 1])[0]
                found.boxes[index] = boxes[index]
        return found.take(keep)
