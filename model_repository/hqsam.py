"""The HQ-SAM models of the repository and the ensemble `hqsam` that clients call.

    image bytes + prompts (original pixels)
      -> hqsam_preprocess  decode (limits checked from the header), ResizeLongestSide, pad,
                           validate prompts, map them to the encoder frame
      -> hqsam_encoder_guard  dynamic batching in batches the memory allows; response cache
                           keyed by the preprocessed image, so a second prompt skips the encoder;
                           UNAVAILABLE (retryable) for a request the encoder lost (admission.py)
      -> hqsam_encoder     ViT + HQ fusion convs, one guard batch per run
      -> hqsam_decoder     prompt encoding + HQ mask decoder, N prompt sets at once
      -> hqsam_postprocess logits -> masks at the original size, thresholded; hands on the
                           decoder's outputs, so every output comes from the last step
                           (`definitions.check_outputs_come_from_the_last_step`)
and `hqsam_automatic` (model_repository/automatic.py), which segments everything over the
same encoder and decoder.
The ensemble's tensors below are the public API (README, "The `hqsam` API").
"""

from __future__ import annotations

from perceptserve.settings import Settings

from . import automatic
from .admission import guard_name, guarded
from .definitions import DynamicBatching, EnsembleStep, ModelDefinition, Runtime, Tensor

ENSEMBLE = "hqsam"
PREPROCESS = "hqsam_preprocess"
ENCODER = "hqsam_encoder"
ENCODER_GUARD = guard_name(ENCODER)
DECODER = "hqsam_decoder"
POSTPROCESS = "hqsam_postprocess"

ENSEMBLE_INPUTS = (
    Tensor("image", "STRING", (1,)),
    Tensor("point_coords", "FP32", (-1, -1, 2), optional=True),
    Tensor("point_labels", "INT32", (-1, -1), optional=True),
    Tensor("boxes", "FP32", (-1, 4), optional=True),
    Tensor("mask_input", "FP32", (-1, 1, 256, 256), optional=True),
    Tensor("multimask_output", "BOOL", (1,), optional=True),
    Tensor("hq_token_only", "BOOL", (1,), optional=True),
)
ENSEMBLE_OUTPUTS = (
    Tensor("masks", "BOOL", (-1, 1, -1, -1)),
    Tensor("iou_predictions", "FP32", (-1, 1)),
    Tensor("low_res_logits", "FP32", (-1, 1, 256, 256)),
)

# The encoder's and decoder's tensors: the ONNX export's inputs, example shapes and dynamic axes
# are read from these (`export.hqsam`), so the graph and the config cannot drift apart.
PROMPT_SETS, POINTS = "prompt_sets", "points"
ENCODER_INPUTS = (Tensor("image", "UINT8", (1024, 1024, 3)), Tensor("input_size", "INT64", (2,)))
ENCODER_OUTPUTS = (
    Tensor("image_embeddings", "FP32", (256, 64, 64)),
    Tensor("hq_features", "FP32", (32, 256, 256)),
)
DECODER_INPUTS = (
    Tensor("image_embeddings", "FP32", (1, 256, 64, 64)),
    Tensor("hq_features", "FP32", (1, 32, 256, 256)),
    Tensor("point_coords", "FP32", (-1, -1, 2), axes=(PROMPT_SETS, POINTS)),
    Tensor("point_labels", "FP32", (-1, -1), axes=(PROMPT_SETS, POINTS)),
    Tensor("mask_input", "FP32", (-1, 1, 256, 256), axes=(PROMPT_SETS,)),
    Tensor("has_mask_input", "FP32", (1,)),
    Tensor("multimask_output", "BOOL", (1,)),
    Tensor("hq_token_only", "BOOL", (1,)),
)
DECODER_OUTPUTS = (Tensor("low_res_logits", "FP32", (-1, 1, 256, 256)), Tensor("iou_predictions", "FP32", (-1, 1)))

PREPROCESS_OUTPUTS = (
    Tensor("encoder_image", "UINT8", (1, 1024, 1024, 3)),
    Tensor("input_size", "INT64", (1, 2)),
    Tensor("original_size", "INT64", (2,)),
    Tensor("decoder_point_coords", "FP32", (-1, -1, 2)),
    Tensor("decoder_point_labels", "FP32", (-1, -1)),
    Tensor("decoder_mask_input", "FP32", (-1, 1, 256, 256)),
    Tensor("has_mask_input", "FP32", (1,)),
    Tensor("multimask_flag", "BOOL", (1,)),
    Tensor("hq_token_only_flag", "BOOL", (1,)),
)


def _same_names(names) -> dict[str, str]:
    return {name: name for name in names}


def definitions(settings: Settings) -> list[ModelDefinition]:
    serving = settings.hqsam
    batching = serving.encoder_batching
    return [
        ModelDefinition(
            name=PREPROCESS,
            runtime=Runtime.PYTHON,
            python_source="hqsam_preprocess.py",
            inputs=ENSEMBLE_INPUTS,
            outputs=PREPROCESS_OUTPUTS,
            instances=serving.python_instances,
            parameters={
                "max_image_pixels": str(serving.max_image_pixels),
                "max_prompt_sets": str(serving.max_prompt_sets),
                "max_points": str(serving.max_points),
            },
        ),
        *guarded(
            ModelDefinition(
                name=ENCODER,
                runtime=Runtime.ONNX,
                inputs=ENCODER_INPUTS,
                outputs=ENCODER_OUTPUTS,
                max_batch_size=batching.max_batch_size,
                instances=serving.encoder_instances,
                dynamic_batching=DynamicBatching(
                    batching.preferred_batch_sizes, batching.max_queue_delay_us, batching.max_queue_size
                ),
                response_cache=serving.encoder_response_cache,
                warmup=serving.warmup,
            )
        ),
        ModelDefinition(
            name=DECODER,
            runtime=Runtime.ONNX,
            inputs=DECODER_INPUTS,
            outputs=DECODER_OUTPUTS,
            instances=serving.decoder_instances,
            warmup=serving.warmup,  # its first run (ONNX Runtime's allocations) was 0.6 s of the first request
        ),
        ModelDefinition(
            name=POSTPROCESS,
            runtime=Runtime.PYTHON,
            python_source="hqsam_postprocess.py",
            inputs=DECODER_OUTPUTS + (Tensor("input_size", "INT64", (1, 2)), Tensor("original_size", "INT64", (2,))),
            outputs=ENSEMBLE_OUTPUTS,  # iou_predictions and low_res_logits passed through
            instances=serving.python_instances,
            parameters={"mask_threshold": str(serving.mask_threshold)},
        ),
        ModelDefinition(
            name=ENSEMBLE,
            runtime=Runtime.ENSEMBLE,
            inputs=ENSEMBLE_INPUTS,
            outputs=ENSEMBLE_OUTPUTS,
            steps=(
                EnsembleStep(
                    PREPROCESS,
                    inputs=_same_names(t.name for t in ENSEMBLE_INPUTS),
                    outputs=_same_names(t.name for t in PREPROCESS_OUTPUTS),
                ),
                EnsembleStep(
                    ENCODER_GUARD,
                    inputs={"image": "encoder_image", "input_size": "input_size"},
                    outputs=_same_names(t.name for t in ENCODER_OUTPUTS),
                ),
                EnsembleStep(
                    DECODER,
                    inputs={
                        "image_embeddings": "image_embeddings",
                        "hq_features": "hq_features",
                        "point_coords": "decoder_point_coords",
                        "point_labels": "decoder_point_labels",
                        "mask_input": "decoder_mask_input",
                        "has_mask_input": "has_mask_input",
                        "multimask_output": "multimask_flag",
                        "hq_token_only": "hq_token_only_flag",
                    },
                    outputs={t.name: f"decoder_{t.name}" for t in DECODER_OUTPUTS},
                ),
                EnsembleStep(
                    POSTPROCESS,
                    inputs={t.name: f"decoder_{t.name}" for t in DECODER_OUTPUTS}
                    | _same_names(("input_size", "original_size")),
                    outputs=_same_names(t.name for t in ENSEMBLE_OUTPUTS),
                ),
            ),
        ),
        automatic.definition(
            ENSEMBLE,
            tuple(t.name for t in ENCODER_OUTPUTS),
            ("multimask_output", "hq_token_only"),
            settings,
        ),
    ]
