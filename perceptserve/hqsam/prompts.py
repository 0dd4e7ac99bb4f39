"""Validating HQ-SAM prompts from an untrusted caller and turning them into the decoder's
inputs, numpy only (this runs inside Triton's python backend).

The caller gives prompts in original-image pixels, as to `SamPredictor.predict`:
  point_coords [N, P, 2] (x, y) with point_labels [N, P], boxes [N, 4] (x0, y0, x1, y1),
  mask_input [N, 1, 256, 256]; each optional but at least one given, N equal across them.
The decoder gets what `PromptEncoder.forward` would build from them: points then the box's two
corners (labels 2 and 3), or points plus one padding point (label -1) when there is no box.
Nothing is clipped or guessed: every problem is a `PromptError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceptserve.errors import InvalidRequest

from .families import Family
from .geometry import LOW_RES_MASK_SIZE, scale_coords

VALID_LABELS = (-1, 0, 1, 2, 3)


class PromptError(InvalidRequest):
    """Prompts that cannot be decoded; the message names the problem."""


@dataclass(frozen=True)
class PromptLimits:
    max_prompt_sets: int
    max_points: int


@dataclass
class DecoderPrompts:
    """The prompt inputs of the exported `PromptDecoder`."""

    point_coords: np.ndarray  # [N, P', 2] float32, encoder frame
    point_labels: np.ndarray  # [N, P'] float32
    mask_input: np.ndarray  # [N, 1, 256, 256] float32
    has_mask_input: np.ndarray  # [1] float32


def _finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise PromptError(f"{name} contains NaN or infinite values")


def _check_shape(name: str, array: np.ndarray, tail: tuple[int, ...], layout: str) -> int:
    if array.ndim != 1 + len(tail) or tuple(array.shape[1:]) != tail:
        raise PromptError(f"{name} has shape {list(array.shape)}; expected {layout}")
    return array.shape[0]


def _check_inside(name: str, xy: np.ndarray, original_size: tuple[int, int]) -> None:
    height, width = original_size
    outside = (xy[..., 0] < 0) | (xy[..., 0] > width) | (xy[..., 1] < 0) | (xy[..., 1] > height)
    if np.any(outside):
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        x, y = (float(v) for v in xy[index])
        raise PromptError(f"{name}{list(index)} = ({x:g}, {y:g}) is outside the {width}x{height} image")


def _check_points(point_coords: np.ndarray, point_labels: np.ndarray, original_size, limits: PromptLimits) -> dict:
    """The prompt-set counts of the points and their labels, after checking them."""
    if point_coords.ndim != 3 or point_coords.shape[2] != 2:
        raise PromptError(f"point_coords has shape {list(point_coords.shape)}; expected [N, P, 2]")
    counts = {
        "point_coords": point_coords.shape[0],
        "point_labels": _check_shape(
            "point_labels", point_labels, (point_coords.shape[1],), "[N, P] matching point_coords [N, P, 2]"
        ),
    }
    _finite("point_coords", point_coords)
    if point_coords.shape[1] > limits.max_points:
        raise PromptError(f"{point_coords.shape[1]} points per prompt set; the limit is {limits.max_points}")
    bad = ~np.isin(point_labels, VALID_LABELS)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise PromptError(f"point_labels{list(index)} = {point_labels[index]}; labels must be in -1..3")
    _check_inside("point_coords", point_coords, original_size)
    return counts


def _check_boxes(boxes: np.ndarray, original_size) -> int:
    count = _check_shape("boxes", boxes, (4,), "[N, 4] as x0, y0, x1, y1")
    _finite("boxes", boxes)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if np.any(empty):
        i = int(np.argmax(empty))
        raise PromptError(f"boxes[{i}] = {boxes[i].tolist()} is inverted or empty (need x0 < x1 and y0 < y1)")
    _check_inside("boxes", boxes.reshape(-1, 2, 2), original_size)
    return count


def _check_mask(mask_input: np.ndarray) -> int:
    side = LOW_RES_MASK_SIZE
    count = _check_shape("mask_input", mask_input, (1, side, side), f"[N, 1, {side}, {side}]")
    _finite("mask_input", mask_input)
    return count


def _check_prompts(original_size, limits: PromptLimits, point_coords, point_labels, boxes, mask_input) -> int:
    """Check the caller's prompts against the image and the limits; the number of prompt sets N."""
    if (point_coords is None) != (point_labels is None):
        given, missing = ("point_coords", "point_labels") if point_labels is None else ("point_labels", "point_coords")
        raise PromptError(f"{given} was given without {missing}")
    counts: dict[str, int] = {}
    if point_coords is not None:
        counts.update(_check_points(point_coords, point_labels, original_size, limits))
    if boxes is not None:
        counts["boxes"] = _check_boxes(boxes, original_size)
    if mask_input is not None:
        counts["mask_input"] = _check_mask(mask_input)
    if not counts or (set(counts) <= {"point_coords", "point_labels"} and point_coords.shape[1] == 0):
        raise PromptError("no prompt: give point_coords with point_labels, boxes, or mask_input")
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{k} has {v}" for k, v in counts.items())
        raise PromptError(f"prompt sets disagree in number: {detail}")
    n = next(iter(counts.values()))
    if n == 0:
        raise PromptError("no prompt sets (N = 0)")
    if n > limits.max_prompt_sets:
        raise PromptError(f"{n} prompt sets in one request; the limit is {limits.max_prompt_sets}")
    return n


def build_decoder_prompts(
    original_size: tuple[int, int],
    limits: PromptLimits,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> DecoderPrompts:
    """Check the caller's prompts (`_check_prompts`), then build the decoder's inputs from them."""
    n = _check_prompts(original_size, limits, point_coords, point_labels, boxes, mask_input)
    coords = [] if point_coords is None else [scale_coords(point_coords, original_size)]
    labels = [] if point_labels is None else [point_labels.astype(np.float32)]
    if boxes is not None:
        coords.append(scale_coords(boxes.reshape(n, 2, 2), original_size))
        labels.append(np.tile(np.array([[2, 3]], dtype=np.float32), (n, 1)))
    elif point_coords is not None:
        coords.append(np.zeros((n, 1, 2), dtype=np.float32))
        labels.append(np.full((n, 1), -1, dtype=np.float32))
    if not coords:  # a mask prompt alone: no sparse tokens at all, as in PromptEncoder
        coords, labels = [np.zeros((n, 0, 2), np.float32)], [np.zeros((n, 0), np.float32)]
    has_mask = mask_input is not None
    return DecoderPrompts(
        point_coords=np.concatenate(coords, axis=1).astype(np.float32),
        point_labels=np.concatenate(labels, axis=1).astype(np.float32),
        mask_input=(
            mask_input.astype(np.float32)
            if has_mask
            else np.zeros((n, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32)
        ),
        has_mask_input=np.array([1.0 if has_mask else 0.0], dtype=np.float32),
    )


def mask_selection(family: Family, multimask_output: bool, hq_token_only: bool) -> dict[str, np.ndarray]:
    """The decoder's mask-selection inputs, by the decoder's names: HQ-SAM's two flags, or plain
    SAM's mask tokens as `MaskDecoder.forward` slices them (1..3 with multimask_output, else 0)."""
    if family.hq:
        return {"multimask_output": np.array([multimask_output]), "hq_token_only": np.array([hq_token_only])}
    if hq_token_only:
        raise PromptError(f"hq_token_only is an HQ-SAM option; the {family.name} model has no HQ token (use hqsam)")
    return {"mask_slots": np.array([1, 2, 3] if multimask_output else [0], dtype=np.int64)}


@dataclass
class PromptBatch:
    """Prompts with the prompt-set dimension present, and whether the caller gave one set."""

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None
    single: bool


def as_prompt_batch(point_coords=None, point_labels=None, box=None, mask_input=None) -> PromptBatch:
    """`SamPredictor.predict`'s arguments (one prompt set: points [P, 2], box [4], mask
    [1, 256, 256]) or batched ones (points [N, P, 2], boxes [N, 4], masks [N, 1, 256, 256])."""

    def array(value, dtype):
        return None if value is None else np.asarray(value, dtype=dtype)

    coords, labels = array(point_coords, np.float32), array(point_labels, np.int32)
    boxes, masks = array(box, np.float32), array(mask_input, np.float32)
    single = (
        (coords is not None and coords.ndim == 2)
        or (boxes is not None and boxes.ndim == 1)
        or (masks is not None and masks.ndim == 3)
    )
    if single:
        coords = None if coords is None else coords[None]
        labels = None if labels is None else labels[None]
        boxes = None if boxes is None else boxes.reshape(1, -1)
        masks = None if masks is None else masks[None]
    return PromptBatch(coords, labels, boxes, masks, single)
