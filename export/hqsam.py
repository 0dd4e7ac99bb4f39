"""`perceptserve export hqsam|sam`: a checkpoint of a SAM family -> that family's models in a
Triton model repository, checked against the family's official model.

Steps: build the official model and load the checkpoint strictly (or seed random weights),
export the image encoder and the prompt decoder to ONNX (dynamic batch / prompt sets / points),
optionally convert to fp16 and build TensorRT engines, write every model's `cpu` and `gpu`
configs, then run the parity check on a real photo. Only the family's own models are written:
the other families a repository holds (and DatasetDM) stay, so one server serves them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from perceptserve.model_repository import automatic, memory
from perceptserve.model_repository import hqsam as names
from perceptserve.model_repository.configs import ONNX_FILE, PLAN_FILE, cpu_onnx_file
from perceptserve.model_repository.writer import recorded_parameter, remove_models, version_dir, write_models

from perceptserve.hqsam import checkpoint_loading, registry
from perceptserve.hqsam.banded_attention import row_banded_attention
from perceptserve.hqsam.export_modules import INT8_FP32_SCOPES, ImageEncoder, prompt_decoder
from perceptserve.hqsam.families import HQSAM, Family
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
    family: Family = HQSAM
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
    """The official model of the job's family with the job's weights, eval mode, caches refreshed.

    `eval()` is called again after loading because TinyViT caches its attention biases when
    `eval()` is called: the official `build_sam_vit_t` calls it *before* loading the checkpoint,
    so its model runs with the initial biases. Ours (and our parity reference) use the
    checkpoint's.
    """
    with torch.random.fork_rng():
        torch.manual_seed(job.seed)  # builders draw random buffers (the prompt encoder's PE matrix)
        sam = registry.build_reference(job.model, job.family)
    if job.checkpoint is None:
        registry.randomize_(sam, job.seed)
    else:
        state = checkpoint_loading.read_state_dict(job.checkpoint)
        checkpoint_loading.load_strict(
            sam,
            state,
            family=job.family,
            model_type=job.model if isinstance(job.model, str) else None,
            allow_missing_hq=job.allow_missing_hq,
        )
    return sam.eval()


# The bounds of the decoder's named dynamic axes (`names.tensors(family).decoder_inputs`); zero
# points is a box or mask prompt alone; plain SAM's decoder returns 1 or 3 of its 4 mask tokens.
DECODER_BOUNDS = {
    names.PROMPT_SETS: torch.export.Dim(names.PROMPT_SETS, min=1, max=1024),
    names.POINTS: torch.export.Dim(names.POINTS, min=0, max=1024),
    names.MASK_SLOTS: torch.export.Dim(names.MASK_SLOTS, min=1, max=4),
}


def apply_precision(onnx_paths: dict[str, Path], family: Family, precision: str) -> None:
    """`--precision` on the family's exported encoder and decoder (`onnx_paths` by model name):
    with int8, the encoder alone gets its int8 copy, its first ViT block kept in fp32."""
    encoder = onnx_paths[family.encoder]
    onnx_io.apply_precision(onnx_paths.values(), precision, quantized=[encoder], fp32_scopes=INT8_FP32_SCOPES)


def export_encoder(sam, family: Family, path: Path) -> Path:
    named = names.tensors(family)
    example = {
        "image": torch.zeros(2, 1024, 1024, 3, dtype=torch.uint8),
        "input_size": torch.tensor([[1024, 768], [683, 1024]]),
    }
    with row_banded_attention(sam.image_encoder):
        return onnx_io.export(
            ImageEncoder(sam, family.hq).eval(),
            example,
            path,
            named.encoder_inputs,
            named.encoder_outputs,
            batch=torch.export.Dim("batch", min=1, max=64),
        )


def export_decoder(sam, family: Family, path: Path) -> Path:
    """The family's decoder; its example holds every family's inputs and takes those the
    family's decoder defines, in their order."""
    named = names.tensors(family)
    sets, points = 3, 4
    every_family = {
        "image_embeddings": torch.zeros(1, 256, 64, 64),
        "hq_features": torch.zeros(1, 32, 256, 256),
        "point_coords": torch.rand(sets, points, 2) * 1024,
        "point_labels": torch.tensor([[1.0, 0.0, 2.0, 3.0]] * sets),
        "mask_input": torch.zeros(sets, 1, 256, 256),
        "has_mask_input": torch.tensor([0.0]),
        "multimask_output": torch.tensor([False]),
        "hq_token_only": torch.tensor([False]),
        "mask_slots": torch.tensor([1, 2, 3]),
    }
    example = {tensor.name: every_family[tensor.name] for tensor in named.decoder_inputs}
    return onnx_io.export(
        prompt_decoder(sam, family.hq).eval(),
        example,
        path,
        named.decoder_inputs,
        named.decoder_outputs,
        DECODER_BOUNDS,
    )


def replace_family(repository: Path, family: Family, model: str | registry.Architecture) -> None:
    """Remove what an earlier export of this family left in the repository, saying so when the
    model type changes; other families' models (and DatasetDM's) stay."""
    previous = recorded_parameter(repository, family.ensemble, names.MODEL_TYPE_PARAMETER)
    current = model if isinstance(model, str) else "a custom-size model"
    if previous and previous != current:
        print(f"{repository} holds {family.name} {previous}: replacing it with {current}", file=sys.stderr, flush=True)
    remove_models(repository, (*family.models, automatic.model_name(family.name)))


def run(job: HQSamExport, settings: Settings) -> hqsam_parity.ParityReport:
    """Export, write the repository, check parity; returns the report (the CLI sets the exit code)."""
    if job.tensorrt:
        tensorrt.require_tensorrt()  # fail before minutes of export, not after
    steps = Steps(total=5 + (job.precision in PRECISION_STEPS) + job.tensorrt + job.measure_memory)
    with steps.step(
        "loading the official model" + (f" from {job.checkpoint}" if job.checkpoint else " (random weights)")
    ):
        sam = load_model(job)
    family = job.family
    replace_family(job.repository, family, job.model)
    onnx_paths = {
        family.encoder: version_dir(job.repository, family.encoder) / ONNX_FILE,
        family.decoder: version_dir(job.repository, family.decoder) / ONNX_FILE,
    }
    with torch.no_grad():
        with steps.step("exporting the image encoder to ONNX"):
            export_encoder(sam, family, onnx_paths[family.encoder])
        with steps.step("exporting the prompt decoder to ONNX"):
            export_decoder(sam, family, onnx_paths[family.decoder])
    converting = job.precision in PRECISION_STEPS
    with steps.step(PRECISION_STEPS[job.precision]) if converting else contextlib.nullcontext():
        apply_precision(onnx_paths, family, job.precision)
    if job.tensorrt:
        with steps.step("building TensorRT engines"):
            serving = settings.hqsam
            profiles = tensorrt.hqsam_profiles(
                serving.encoder_batching.max_batch_size, serving.max_prompt_sets, serving.max_points, family.hq
            )
            for key, model in (("encoder", family.encoder), ("decoder", family.decoder)):
                path = onnx_paths[model]
                tensorrt.build_engine(path, path.parent / PLAN_FILE, profiles[key], fp16=job.precision != "fp32")
    with steps.step("writing the model repository configs (cpu and gpu)"):
        model_type = job.model if isinstance(job.model, str) else None
        write_models(job.repository, names.definitions(settings, family, model_type), settings)
    if job.measure_memory:
        with steps.step("measuring the image encoder's memory per batch item (batches of 1 and 2)"):
            encoder = memory_probe.measure(family.encoder, cpu_onnx_file(version_dir(job.repository, family.encoder)))
            encoder.write(job.repository)
            limits = memory.fit_repository(job.repository, settings.memory)
            print(memory.describe(job.repository, settings.memory, limits))
    with steps.step(f"parity check against the official {family.title} SamPredictor"):
        photos = hqsam_parity.photos(job.precision) if job.parity_image is None else {"given": job.parity_image}
        with torch.no_grad():
            return hqsam_parity.check(sam, OnnxPredictor(job.repository, family), photos, job.precision, family)
