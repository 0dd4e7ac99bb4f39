"""The generator's parameters: one table that the served model's inputs, its validation, the
clients and the CLI are all built from, with the official defaults and the server's limits.

Every parameter is optional on the wire; a missing one takes `SamAutomaticMaskGenerator`'s
default. An out-of-range value is an `InvalidRequest` naming the parameter (INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from perceptserve.errors import InvalidRequest
from perceptserve.settings import AutomaticLimits


class ParameterError(InvalidRequest):
    """A generator parameter outside its range; the message names it."""


@dataclass(frozen=True)
class GeneratorParameters:
    """`SamAutomaticMaskGenerator`'s arguments (and `generate`'s `multimask_output`, and HQ-SAM's
    `hq_token_only`), with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    multimask_output: bool = True
    hq_token_only: bool = False

    def official_arguments(self) -> dict:
        """The keyword arguments of `SamAutomaticMaskGenerator(...)` (the last two go elsewhere)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in FLAGS}


FLAGS = ("multimask_output", "hq_token_only")
# Triton's type of each parameter's input tensor (shape [1]).
WIRE_TYPES = {bool: "BOOL", int: "INT32", float: "FP32"}
UNIT_INTERVAL = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")


def wire_type(name: str) -> str:
    return WIRE_TYPES[type(getattr(GeneratorParameters(), name))]


NAMES = tuple(f.name for f in fields(GeneratorParameters))


def _check_range(name: str, value, low, high) -> None:
    if not (low <= value <= high):
        raise ParameterError(f"{name} = {value} is outside [{low}, {high}]")


def validated(values: dict, limits: AutomaticLimits) -> GeneratorParameters:
    """Given values (the rest default) -> parameters, each checked against its range."""
    unknown = set(values) - set(NAMES)
    if unknown:
        raise ParameterError(f"unknown generator parameters: {', '.join(sorted(unknown))}")
    defaults = GeneratorParameters()
    typed = {}
    for name, value in values.items():
        kind = type(getattr(defaults, name))
        if kind is not bool and not math.isfinite(float(value)):
            raise ParameterError(f"{name} = {value} is not a finite number")
        if kind is int and float(value) != int(value):
            raise ParameterError(f"{name} = {value} is not an integer")
        typed[name] = kind(value)
    parameters = GeneratorParameters(**{**{n: getattr(defaults, n) for n in NAMES}, **typed})
    for name in UNIT_INTERVAL:
        _check_range(name, getattr(parameters, name), 0.0, 1.0)
    _check_range("points_per_side", parameters.points_per_side, 1, limits.max_points_per_side)
    _check_range("points_per_batch", parameters.points_per_batch, 1, limits.max_points_per_batch)
    _check_range("stability_score_offset", parameters.stability_score_offset, 0.0, limits.max_stability_score_offset)
    _check_range("crop_n_layers", parameters.crop_n_layers, 0, limits.max_crop_n_layers)
    _check_range("crop_overlap_ratio", parameters.crop_overlap_ratio, 0.0, 0.5)
    _check_range(
        "crop_n_points_downscale_factor",
        parameters.crop_n_points_downscale_factor,
        1,
        limits.max_crop_n_points_downscale_factor,
    )
    _check_range("min_mask_region_area", parameters.min_mask_region_area, 0, limits.max_min_mask_region_area)
    return parameters
