"""`perceptserve export hqsam`: an HQ-SAM checkpoint -> the HQ-SAM models of a Triton model
repository, checked against the official model.

Steps: build the official model and load the checkpoint strictly (or seed random weights),
export the image encoder and the prompt decoder to ONNX (dynamic batch / prompt sets / points),
optionally convert to fp16 and build TensorRT engines, write every model's `cpu` and `gpu`
configs, then run the parity check on a real photo.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch
from perceptserve.model_repository import hqsam as names
from perceptserve.model_repository import memory
from perceptserve.model_repository.configs import ONNX_FILE, PLAN_FILE, cpu_onnx_file
from perceptserve.model_repository.writer import version_dir, write_models

from perceptserve.hqsam import checkpoint_loading, registry
from perceptserve.hqsam.export_modules import ImageEncoder, PromptDecoder
from perceptserve.hqsam.onnx_predictor import OnnxPredictor
from perceptserve.settings import Settings

from . import hqsam_parity, memory_probe, onnx_io, tensorrt
from .progress import Steps

PRECISION_STEPS = {
    "fp16": "converting to fp16 (norms, softmax and erf kept in fp32)",
    "int8": "quantising the image encoder to int8 for the cpu target (decoder fp32; gpu keeps TensorRT fp16)",
}


@dataclasses.dataclass(frozen=True)
class HQSamExport:
    model: str | registry.Architecture
    repository: Path
    checkpoint: Path | None = None  # None: random weights from `seed`
    seed: int = 0
    precision: str = "fp32"  # one of settings.PRECISIONS
    tensorrt: bool = False
    allow_missing_hq: bool = False
    parity_image: np.ndarray | None = None  # default: `hqsam_parity.photos(precision)`
    # Measure the encoder's memory per batch item and size its batches to the budget (two
    # subprocess runs; off in tests that do not serve batches).
    measure_memory: bool = False


def load_model(job: HQSamExport):
    """The official model with the job's weights, eval mode, caches refreshed.

    `eval()` is called again after loading because TinyViT caches its attention biases when
    `eval()` is called: the official `build_sam_vit_t` calls it *before* loading the checkpoint,
    so its model runs with the initial biases. Ours (and our parity reference) use the
    checkpoint's.
    """
    with torch.random.fork_rng():
        torch.manual_seed(job.seed)  # builders draw random buffers (the prompt encoder's PE matrix)
        sam = registry.build_reference(job.model)
    if job.checkpoint is None:
        registry.randomize_(sam, job.seed)
    else:
        state = checkpoint_loading.read_state_dict(job.checkpoint)
        checkpoint_loading.load_strict(sam, state, allow_missing_hq=job.allow_missing_hq)
    return sam.eval()


# The bounds of the decoder's named dynamic axes (`names.DECODER_INPUTS`); zero points is a box
# or mask prompt alone.
DECODER_BOUNDS = {
    names.PROMPT_SETS: torch.export.Dim(names.PROMPT_SETS, min=1, max=1024),
    names.POINTS: torch.export.Dim(names.POINTS, min=0, max=1024),
}


def export_encoder(sam, path: Path) -> Path:
    example = {
        "image": torch.zeros(2, 1024, 1024, 3, dtype=torch.uint8),
        "input_size": torch.tensor([[1024, 768], [683, 1024]]),
    }
    return onnx_io.export(
        ImageEncoder(sam).eval(),
        example,
        path,
        names.ENCODER_INPUTS,
        names.ENCODER_OUTPUTS,
        batch=torch.export.Dim("batch", min=1, max=64),
    )


def export_decoder(sam, path: Path) -> Path:
    sets, points = 3, 4
    example = {
        "image_embeddings": torch.zeros(1, 256, 64, 64),
        "hq_features": torch.zeros(1, 32, 256, 256),
        "point_coords": torch.rand(sets, points, 2) * 1024,
        "point_labels": torch.tensor([[1.0, 0.0, 2.0, 3.0]] * sets),
        "mask_input": torch.zeros(sets, 1, 256, 256),
        "has_mask_input": torch.tensor([0.0]),
        "multimask_output": torch.tensor([False]),
        "hq_token_only": torch.tensor([False]),
    }
    return onnx_io.export(
        PromptDecoder(sam).eval(), example, path, names.DECODER_INPUTS, names.DECODER_OUTPUTS, DECODER_BOUNDS
    )


def run(job: HQSamExport, settings: Settings) -> hqsam_parity.ParityReport:
    """Export, write the repository, check parity; returns the report (the CLI sets the exit code)."""
    if job.tensorrt:
        tensorrt.require_tensorrt()  # fail before minutes of export, not after
    steps = Steps(total=5 + (job.precision in PRECISION_STEPS) + job.tensorrt + job.measure_memory)
    with steps.step(
        "loading the official model" + (f" from {job.checkpoint}" if job.checkpoint else " (random weights)")
    ):
        sam = load_model(job)
    onnx_paths = {
        names.ENCODER: version_dir(job.repository, names.ENCODER) / ONNX_FILE,
        names.DECODER: version_dir(job.repository, names.DECODER) / ONNX_FILE,
    }
    with torch.no_grad():
        with steps.step("exporting the image encoder to ONNX"):
            export_encoder(sam, onnx_paths[names.ENCODER])
        with steps.step("exporting the prompt decoder to ONNX"):
            export_decoder(sam, onnx_paths[names.DECODER])
    converting = job.precision in PRECISION_STEPS
    with steps.step(PRECISION_STEPS[job.precision]) if converting else contextlib.nullcontext():
        onnx_io.apply_precision(onnx_paths.values(), job.precision, quantized=[onnx_paths[names.ENCODER]])
    if job.tensorrt:
        with steps.step("building TensorRT engines"):
            serving = settings.hqsam
            profiles = tensorrt.hqsam_profiles(
                serving.encoder_batching.max_batch_size, serving.max_prompt_sets, serving.max_points
            )
            for key, model in (("encoder", names.ENCODER), ("decoder", names.DECODER)):
                path = onnx_paths[model]
                tensorrt.build_engine(path, path.parent / PLAN_FILE, profiles[key], fp16=job.precision != "fp32")
    with steps.step("writing the model repository configs (cpu and gpu)"):
        write_models(job.repository, names.definitions(settings), settings)
    if job.measure_memory:
        with steps.step("measuring the image encoder's memory per batch item (batches of 1 and 2)"):
            encoder = memory_probe.measure(names.ENCODER, cpu_onnx_file(version_dir(job.repository, names.ENCODER)))
            encoder.write(job.repository)
            limits = memory.fit_repository(job.repository, settings.memory)
            print(memory.describe(job.repository, settings.memory, limits))
    with steps.step("parity check against the official SamPredictor"):
        photos = hqsam_parity.photos(job.precision) if job.parity_image is None else {"given": job.parity_image}
        with torch.no_grad():
            return hqsam_parity.check(sam, OnnxPredictor(job.repository), photos, job.precision)
