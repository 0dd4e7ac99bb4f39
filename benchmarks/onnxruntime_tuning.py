"""ONNX Runtime CPU tuning for the `onnxruntime` modes: threads, graph optimisation level, and an
int8 variant of the encoder (the export's `--precision int8` quantisation), whose speed-up is only worth
having if its masks still agree with fp32: `mask_agreement` measures that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from perceptserve.export import onnx_io
from perceptserve.export.hqsam_parity import mask_iou, prompt_cases
from perceptserve.model_repository.configs import ONNX_FILE
from perceptserve.model_repository.writer import version_dir

from perceptserve.hqsam.export_modules import INT8_FP32_SCOPES
from perceptserve.hqsam.families import Family
from perceptserve.hqsam.onnx_predictor import OnnxPredictor

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OrtTuning:
    threads: int = 0  # intra-op threads; 0: one per core
    optimization: str = "all"  # a key of OPTIMIZATION_LEVELS

    def predictor(self, repository: Path, family: Family) -> OnnxPredictor:
        return OnnxPredictor(
            repository, family, threads=self.threads, optimization=OPTIMIZATION_LEVELS[self.optimization]
        )

    def to_json(self) -> dict:
        return {"threads": self.threads, "graph_optimization_level": self.optimization}


def quantized_repository(repository: Path, folder: Path, family: Family) -> Path:
    """A repository in `folder` holding an int8 copy of the encoder and the fp32 decoder.

    Weights become int8 (activations are quantised at run time); the decoder is linked, not
    copied: it is small, runs once per prompt, and is kept in fp32 so that the comparison with
    fp32 isolates the encoder.
    """
    source = version_dir(repository, family.encoder) / ONNX_FILE
    target = version_dir(folder, family.encoder) / ONNX_FILE
    decoder = version_dir(folder, family.decoder) / ONNX_FILE
    for path in (target, decoder):
        path.parent.mkdir(parents=True, exist_ok=True)
    decoder.unlink(missing_ok=True)
    os.symlink((version_dir(repository, family.decoder) / ONNX_FILE).resolve(), decoder)
    onnx_io.quantize_int8(source, target, INT8_FP32_SCOPES)
    return folder


def mask_agreement(reference, candidate, image: np.ndarray) -> dict:
    """Mask IoU of `candidate` against `reference` (anything with `SamPredictor`'s `set_image`
    and `predict`) over the parity check's prompt cases (point, points with a negative, box, box
    and point); `iou_loss` is 1 - mean IoU."""
    reference.set_image(image)
    candidate.set_image(image)
    ious = []
    for prompt in prompt_cases(*image.shape[:2]).values():
        expected = reference.predict(**prompt, multimask_output=False)[0]
        got = candidate.predict(**prompt, multimask_output=False)[0]
        ious.append(mask_iou(np.asarray(got), np.asarray(expected)))
    mean = float(np.mean(ious))
    return {"cases": len(ious), "mask_iou_mean": mean, "mask_iou_min": float(min(ious)), "iou_loss": 1.0 - mean}
