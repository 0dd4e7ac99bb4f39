"""A SAM family's exported models in ONNX Runtime with `SamPredictor`'s two-phase interface, no
server.

The same geometry and prompt code the python-backend models run, around the exported encoder
and decoder: the export's parity check, the tests and the benchmark's `onnxruntime` mode use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from perceptserve.model_repository.configs import cpu_onnx_file
from perceptserve.model_repository.writer import version_dir
from perceptserve.onnxruntime_session import cpu_session

from .families import HQSAM, Family
from .geometry import resize_and_pad, upscale_logits
from .prompts import PromptLimits, as_prompt_batch, build_decoder_prompts, mask_selection

NO_LIMITS = PromptLimits(max_prompt_sets=1 << 20, max_points=1 << 20)


class OnnxPredictor:
    def __init__(
        self,
        repository: Path,
        family: Family = HQSAM,
        threads: int = 0,
        mask_threshold: float = 0.0,
        optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ) -> None:
        self.family = family
        self.encoder, self.decoder = (
            cpu_session(cpu_onnx_file(version_dir(repository, model)), threads, optimization=optimization)
            for model in (family.encoder, family.decoder)
        )
        self.mask_threshold = mask_threshold
        self.features: dict[str, np.ndarray] | None = None  # the encoder's outputs by name

    def set_image(self, image: np.ndarray) -> None:
        """HWC uint8 RGB, as `SamPredictor.set_image`."""
        padded, self.input_size = resize_and_pad(image)
        self.original_size = image.shape[:2]
        outputs = self.encoder.run(
            None, {"image": padded[None], "input_size": np.array([self.input_size], dtype=np.int64)}
        )
        self.features = {output.name: value for output, value in zip(self.encoder.get_outputs(), outputs, strict=True)}

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks, scores, low_res_logits) with the official shapes: [1, H, W], [1], [1, 256, 256]
        for one prompt set, with a leading N for batched prompts."""
        if self.features is None:
            raise RuntimeError("call set_image before predict")
        batch = as_prompt_batch(point_coords, point_labels, box, mask_input)
        prompts = build_decoder_prompts(
            self.original_size, NO_LIMITS, batch.point_coords, batch.point_labels, batch.boxes, batch.mask_input
        )
        low_res, iou = self.decoder.run(
            None,
            {
                **self.features,
                "point_coords": prompts.point_coords,
                "point_labels": prompts.point_labels,
                "mask_input": prompts.mask_input,
                "has_mask_input": prompts.has_mask_input,
                **mask_selection(self.family, multimask_output, hq_token_only),
            },
        )
        logits = upscale_logits(low_res, self.input_size, self.original_size)
        masks = logits if return_logits else logits > self.mask_threshold
        if batch.single:
            return masks[0], iou[0], low_res[0]
        return masks, iou, low_res
