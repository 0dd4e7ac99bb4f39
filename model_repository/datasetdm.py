"""The DatasetDM models of the repository: the frozen Stable Diffusion parts and the P-Decoders,
each an ONNX model. Their tensors below are the contract the serving models build on:

    annotate (a real image):  image -> datasetdm_vae_encoder -> latents (+ noise at the
        annotation timestep) -> datasetdm_features (with the caption's and the empty prompt's
        datasetdm_text_encoder outputs) -> {task}_{low,mid,high,highest}
        -> datasetdm_semantic_decoder (+ the class names' text embeddings) -> class_map, class_scores
        -> datasetdm_depth_decoder -> depth
        -> datasetdm_instance_decoder -> class_logits, mask_logits (instance inference in python)
        -> datasetdm_pose_decoder -> heatmaps, keypoints (x, y, score at the image size)
    generate (from text):     datasetdm_features at every step of the denoising loop (both noise
        predictions; guidance combined by the caller), the feature groups taken at the last step;
        latents -> datasetdm_vae_decoder -> image

The UNet is in one model only, the feature extractor, so its weights are stored and loaded once
(860M parameters, 3.4 GB in fp32, for SD 1.x). Its 1x1 projections, computed on the steps that
do not need them too, are a small part of a UNet pass (measured: benchmarks/README.md).

Batch dimensions are explicit (-1) and the models do not batch across requests (yet): Triton's
batcher needs one shared first dimension, which the semantic decoder's class names (K) and the
UNet's doubled batch do not have. Spatial dimensions are free: images are any multiple of 64
pixels (latents of 8) on each side.
"""

from __future__ import annotations

from dataclasses import dataclass

from perceptserve.settings import Settings

from .admission import guard_name, guarded
from .definitions import ModelDefinition, Runtime, Tensor

TEXT_ENCODER = "datasetdm_text_encoder"
VAE_ENCODER = "datasetdm_vae_encoder"
VAE_DECODER = "datasetdm_vae_decoder"
FEATURES = "datasetdm_features"
# In front of the feature extractor in the annotate ensemble: a request lost to its stub (the
# largest, so the first the OOM killer takes) comes back UNAVAILABLE, not INTERNAL (admission.py).
# `datasetdm_generate` calls the extractor itself and maps the same failures (bls.py).
FEATURES_GUARD = guard_name(FEATURES)
DECODERS = {
    "semantic": "datasetdm_semantic_decoder",
    "depth": "datasetdm_depth_decoder",
    "instance": "datasetdm_instance_decoder",
    "pose": "datasetdm_pose_decoder",
}
KEYPOINTS = 17  # COCO's person keypoints, the pose decoder's heatmaps

GROUPS = ("low", "mid", "high", "highest")  # the feature groups, coarse (latent / 8) to fine (latent)
IMAGE = (-1, 3, -1, -1)


@dataclass(frozen=True)
class ExportedShapes:
    """What the exported models' tensor dims depend on."""

    tokens: int  # the text encoder's sequence length (77)
    text_width: int  # its hidden size (768 for SD 1.x)
    latent_channels: int  # 4
    widths: dict[str, int]  # per task: the width of its projected feature groups


def text_encoder_io(shapes: ExportedShapes) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    return (
        (Tensor("input_ids", "INT64", (-1, shapes.tokens)),),
        (Tensor("text_embeddings", "FP32", (-1, shapes.tokens, shapes.text_width)),),
    )


def vae_encoder_io(shapes: ExportedShapes):
    latents = (-1, shapes.latent_channels, -1, -1)
    outputs = (Tensor("latents", "FP32", latents), Tensor("latents_std", "FP32", latents))
    return (Tensor("image", "FP32", IMAGE),), outputs


def vae_decoder_io(shapes: ExportedShapes):
    return (Tensor("latents", "FP32", (-1, shapes.latent_channels, -1, -1)),), (Tensor("image", "FP32", IMAGE),)


def features_io(shapes: ExportedShapes):
    latents = (-1, shapes.latent_channels, -1, -1)
    text = (-1, shapes.tokens, shapes.text_width)
    inputs = (
        Tensor("latents", "FP32", latents),
        Tensor("timestep", "INT64", (-1,)),
        Tensor("text_embeddings", "FP32", text),
        Tensor("uncond_embeddings", "FP32", text),
    )
    outputs = [Tensor("noise_pred_uncond", "FP32", latents), Tensor("noise_pred_text", "FP32", latents)]
    for task, width in shapes.widths.items():
        outputs += [Tensor(f"{task}_{group}", "FP32", (-1, width, -1, -1)) for group in GROUPS]
    return inputs, tuple(outputs)


def decoder_io(task: str, shapes: ExportedShapes):
    inputs = tuple(Tensor(group, "FP32", (-1, shapes.widths[task], -1, -1)) for group in GROUPS)
    if task == "semantic":
        inputs += (Tensor("class_embeddings", "FP32", (-1, shapes.tokens, shapes.text_width)),)
    outputs = {
        "semantic": (Tensor("class_map", "INT32", (-1, -1, -1)), Tensor("class_scores", "FP32", (-1, -1))),
        "depth": (Tensor("depth", "FP32", (-1, 1, -1, -1)),),
        "instance": (Tensor("class_logits", "FP32", (-1, -1, -1)), Tensor("mask_logits", "FP32", (-1, -1, -1, -1))),
        "pose": (Tensor("heatmaps", "FP32", (-1, KEYPOINTS, -1, -1)), Tensor("keypoints", "FP32", (-1, KEYPOINTS, 3))),
    }
    return inputs, outputs[task]


def io(model: str, shapes: ExportedShapes):
    """(inputs, outputs) of a model by name; the ONNX export reads its input and output names and
    dynamic axes (every -1 dim) from these (`export.onnx_io`)."""
    tables = {
        TEXT_ENCODER: text_encoder_io,
        VAE_ENCODER: vae_encoder_io,
        VAE_DECODER: vae_decoder_io,
        FEATURES: features_io,
    }
    if model in tables:
        return tables[model](shapes)
    task = next(task for task, name in DECODERS.items() if name == model)
    return decoder_io(task, shapes)


def model_names(tasks) -> list[str]:
    return [TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, FEATURES] + [DECODERS[task] for task in tasks]


def definitions(settings: Settings, shapes: ExportedShapes) -> list[ModelDefinition]:
    serving = settings.datasetdm
    result = []
    for name in model_names(shapes.widths):
        inputs, outputs = io(name, shapes)
        instances = serving.decoder_instances if name in DECODERS.values() else serving.diffusion_instances
        model = ModelDefinition(name=name, runtime=Runtime.ONNX, inputs=inputs, outputs=outputs, instances=instances)
        result.extend(guarded(model) if name == FEATURES else (model,))
    return result
