"""DatasetDM's instance inference (`instance_inference` in showlab/DatasetDM
`tools/train_instance_coco.py`, as `tools/parallel_generate_Instance_COCO_AnyClass.py` applies it),
run by the served models on the instance decoder's raw predictions of one image:

1. class probabilities: softmax over the categories + "no object", "no object" dropped;
2. the top `top_k` (query, category) pairs by probability (DatasetDM: 100), here among the
   categories the request names (the others are not asked for);
3. each pair's mask: its query's mask logits resized (bilinear) to the image size, > 0;
4. score = probability x the mean mask probability inside the mask;
5. the best `max_instances` by score (DatasetDM: 20), none under `score_threshold` (0.4) and
   none with an empty mask (DatasetDM skips masks without a contour);
6. boxes from the masks (COCO's [x, y, width, height], pixel edges).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Instances:
    masks: np.ndarray  # (N, H, W) bool
    classes: np.ndarray  # (N,) int32: k, the k-th requested class name (1-based, as in the class map)
    scores: np.ndarray  # (N,) float32
    boxes: np.ndarray  # (N, 4) float32: x, y, width, height


def category_labels(class_names: list[str], categories: tuple[str, ...]) -> np.ndarray:
    """The decoder label of each requested class name, -1 where the decoder has no such category."""
    index = {name: label for label, name in enumerate(categories)}
    return np.array([index.get(name, -1) for name in class_names], dtype=np.int32)


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) COCO boxes around each mask's pixels (zeros for an empty mask)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[index] = (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
    return boxes


@torch.no_grad()
def infer(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: np.ndarray,
    image_size: tuple[int, int],
    max_instances: int,
    score_threshold: float,
    top_k: int = 100,
) -> Instances:
    """One image: class logits (Q, categories + 1), mask logits (Q, h, w), `labels` from
    `category_labels` -> its instances, best first."""
    wanted = np.flatnonzero(labels >= 0)
    probabilities = class_logits.float().softmax(-1)[:, torch.from_numpy(labels[wanted]).long()]  # (Q, K')
    count = min(top_k, probabilities.numel()) if max_instances > 0 else 0
    if count == 0:
        return Instances(
            np.zeros((0, *image_size), bool),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros((0, 4), np.float32),
        )
    top, flat = probabilities.flatten().topk(count)
    queries, columns = torch.div(flat, len(wanted), rounding_mode="floor"), flat % len(wanted)
    unique, inverse = torch.unique(queries, return_inverse=True)
    resized = F.interpolate(mask_logits[unique][None].float(), size=image_size, mode="bilinear", align_corners=False)
    logits = resized[0][inverse]  # (count, H, W)
    binary = logits > 0
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * mask_scores
    order = [i for i in torch.argsort(-scores, stable=True).tolist()[:max_instances] if scores[i] >= score_threshold]
    order = [i for i in order if binary[i].any()]
    masks = binary[order].numpy()
    return Instances(
        masks=masks,
        classes=(wanted[columns[order].numpy()] + 1).astype(np.int32),
        scores=scores[order].numpy().astype(np.float32),
        boxes=boxes_of(masks),
    )


def served_outputs(per_image: list[Instances]) -> dict[str, np.ndarray]:
    """The `instance_*` outputs (`model_repository.datasetdm_serving.TASK_OUTPUTS`) of B images:
    their instances listed image by image, masks as COCO RLE counts."""
    from pycocotools import mask as rle

    masks = [mask for instances in per_image for mask in instances.masks]
    counts = [rle.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"] for mask in masks]
    return {
        "instance_counts": np.array([len(instances.scores) for instances in per_image], dtype=np.int32),
        "instance_rle": np.array(counts, dtype=np.object_),
        "instance_classes": np.concatenate([i.classes for i in per_image]).astype(np.int32),
        "instance_scores": np.concatenate([i.scores for i in per_image]).astype(np.float32),
        "instance_boxes": np.concatenate([i.boxes for i in per_image]).reshape(-1, 4).astype(np.float32),
    }


def scale_keypoints(keypoints: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """(B, K, 3) keypoints read at `from_size` (height, width) -> at `to_size`, scores unchanged."""
    scaled = keypoints.astype(np.float32).copy()
    scaled[..., 0] *= to_size[1] / from_size[1]
    scaled[..., 1] *= to_size[0] / from_size[0]
    return scaled
