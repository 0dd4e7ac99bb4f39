"""The models of a SAM family in the repository and the ensemble clients call, one definition
for every family (`perceptserve.hqsam.families`: `hqsam`, `sam`):

    image bytes + prompts (original pixels)
      -> <family>_preprocess  decode (limits checked from the header), ResizeLongestSide, pad,
                              validate prompts, map them to the encoder frame
      -> <family>_encoder_guard  dynamic batching in batches the memory allows; response cache
                              keyed by the preprocessed image, so a second prompt skips the
                              encoder; UNAVAILABLE (retryable) for a request the encoder lost
                              (admission.py)
      -> <family>_encoder     the image encoder (+ HQ fusion convs), one guard batch per run
      -> <family>_decoder     prompt encoding + mask decoder, N prompt sets at once
      -> <family>_postprocess logits -> masks at the original size, thresholded; hands on the
                              decoder's outputs, so every output comes from the last step
                              (`definitions.check_outputs_come_from_the_last_step`)
and `<family>_automatic` (model_repository/automatic.py), which segments everything over the
same encoder and decoder. The ensemble's tensors below are the public API (README, "The `hqsam`
and `sam` API"); both families take the same inputs (`sam` refuses `hq_token_only` set to true).
"""

from __future__ import annotations

from dataclasses import dataclass

from perceptserve.hqsam.families import HQSAM, Family
from perceptserve.settings import Settings

from . import automatic
from .admission import guarded
from .definitions import DynamicBatching, EnsembleStep, ModelDefinition, Runtime, Tensor

# Where an export records its model type (the ensemble's config), so a later export can say
# what it replaces.
MODEL_TYPE_PARAMETER = "model_type"

ENSEMBLE_INPUTS = (
    Tensor("image", "STRING", (1,)),
    Tensor("point_coords", "FP32", (-1, -1, 2), optional=True),
    Tensor("point_labels", "INT32", (-1, -1), optional=True),
    Tensor("boxes", "FP32", (-1, 4), optional=True),
    Tensor("mask_input", "FP32", (-1, 1, 256, 256), optional=True),
    Tensor("multimask_output", "BOOL", (1,), optional=True),
    Tensor("hq_token_only", "BOOL", (1,), optional=True),
)

# The export gives the decoder's prompt dims these names and bounds (`export.hqsam`).
PROMPT_SETS, POINTS, MASK_SLOTS = "prompt_sets", "points", "mask_slots"

# The decoder's inputs that the preprocessing step computes under another name (the ensemble
# already has `point_coords` etc. as the caller's tensors); the others keep their names.
_DECODER_FEEDS = {
    "point_coords": "decoder_point_coords",
    "point_labels": "decoder_point_labels",
    "mask_input": "decoder_mask_input",
    "multimask_output": "multimask_flag",
    "hq_token_only": "hq_token_only_flag",
}


@dataclass(frozen=True)
class FamilyTensors:
    """Every tensor of a family's models: the ONNX export's inputs, example shapes and dynamic
    axes are read from these (`export.hqsam`), so the graph and the config cannot drift apart."""

    ensemble_outputs: tuple[Tensor, ...]
    encoder_inputs: tuple[Tensor, ...]
    encoder_outputs: tuple[Tensor, ...]
    decoder_inputs: tuple[Tensor, ...]
    decoder_outputs: tuple[Tensor, ...]
    preprocess_outputs: tuple[Tensor, ...]
    # The decoder's inputs -> the ensemble tensors that feed them.
    decoder_feeds: dict[str, str]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.ensemble_outputs]


def tensors(family: Family) -> FamilyTensors:
    """HQ-SAM returns one mask per prompt set; plain SAM 3 with `multimask_output`, as each
    family's `SamPredictor` does. Only HQ-SAM has `hq_features` and the HQ flag; plain SAM's
    decoder takes the mask tokens to return (`mask_slots`) instead of `multimask_output`."""
    masks = 1 if family.hq else -1
    hq = family.hq
    mask_selection = (
        (Tensor("multimask_output", "BOOL", (1,)), Tensor("hq_token_only", "BOOL", (1,)))
        if hq
        else (Tensor("mask_slots", "INT64", (-1,), axes=(MASK_SLOTS,)),)
    )
    decoder_inputs = (
        Tensor("image_embeddings", "FP32", (1, 256, 64, 64)),
        *((Tensor("hq_features", "FP32", (1, 32, 256, 256)),) if hq else ()),
        Tensor("point_coords", "FP32", (-1, -1, 2), axes=(PROMPT_SETS, POINTS)),
        Tensor("point_labels", "FP32", (-1, -1), axes=(PROMPT_SETS, POINTS)),
        Tensor("mask_input", "FP32", (-1, 1, 256, 256), axes=(PROMPT_SETS,)),
        Tensor("has_mask_input", "FP32", (1,)),
        *mask_selection,
    )
    return FamilyTensors(
        ensemble_outputs=(
            Tensor("masks", "BOOL", (-1, masks, -1, -1)),
            Tensor("iou_predictions", "FP32", (-1, masks)),
            Tensor("low_res_logits", "FP32", (-1, masks, 256, 256)),
        ),
        encoder_inputs=(Tensor("image", "UINT8", (1024, 1024, 3)), Tensor("input_size", "INT64", (2,))),
        encoder_outputs=(
            Tensor("image_embeddings", "FP32", (256, 64, 64)),
            *((Tensor("hq_features", "FP32", (32, 256, 256)),) if hq else ()),
        ),
        decoder_inputs=decoder_inputs,
        decoder_outputs=(
            Tensor("low_res_logits", "FP32", (-1, masks, 256, 256)),
            Tensor("iou_predictions", "FP32", (-1, masks)),
        ),
        preprocess_outputs=(
            Tensor("encoder_image", "UINT8", (1, 1024, 1024, 3)),
            Tensor("input_size", "INT64", (1, 2)),
            Tensor("original_size", "INT64", (2,)),
            Tensor("decoder_point_coords", "FP32", (-1, -1, 2)),
            Tensor("decoder_point_labels", "FP32", (-1, -1)),
            Tensor("decoder_mask_input", "FP32", (-1, 1, 256, 256)),
            Tensor("has_mask_input", "FP32", (1,)),
            *(Tensor(_DECODER_FEEDS.get(t.name, t.name), t.dtype, t.dims) for t in mask_selection),
        ),
        decoder_feeds={t.name: _DECODER_FEEDS.get(t.name, t.name) for t in decoder_inputs},
    )


def _same_names(names) -> dict[str, str]:
    return {name: name for name in names}


def definitions(settings: Settings, family: Family = HQSAM, model_type: str | None = None) -> list[ModelDefinition]:
    """The family's models; `model_type` is recorded in the ensemble's config."""
    serving = settings.hqsam
    batching = serving.encoder_batching
    named = tensors(family)
    return [
        ModelDefinition(
            name=family.preprocess,
            runtime=Runtime.PYTHON,
            python_source="hqsam_preprocess.py",
            inputs=ENSEMBLE_INPUTS,
            outputs=named.preprocess_outputs,
            instances=serving.python_instances,
            parameters={
                "max_image_pixels": str(serving.max_image_pixels),
                "max_prompt_sets": str(serving.max_prompt_sets),
                "max_points": str(serving.max_points),
                "family": family.name,
            },
        ),
        *guarded(
            ModelDefinition(
                name=family.encoder,
                runtime=Runtime.ONNX,
                inputs=named.encoder_inputs,
                outputs=named.encoder_outputs,
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
            name=family.decoder,
            runtime=Runtime.ONNX,
            inputs=named.decoder_inputs,
            outputs=named.decoder_outputs,
            instances=serving.decoder_instances,
            warmup=serving.warmup,  # its first run (ONNX Runtime's allocations) was 0.6 s of the first request
            memory_arena=True,  # small runs, one per prompt batch: the arena saves allocating each anew
        ),
        ModelDefinition(
            name=family.postprocess,
            runtime=Runtime.PYTHON,
            python_source="hqsam_postprocess.py",
            inputs=named.decoder_outputs
            + (Tensor("input_size", "INT64", (1, 2)), Tensor("original_size", "INT64", (2,))),
            outputs=named.ensemble_outputs,  # iou_predictions and low_res_logits passed through
            instances=serving.python_instances,
            parameters={"mask_threshold": str(serving.mask_threshold)},
        ),
        ModelDefinition(
            name=family.ensemble,
            runtime=Runtime.ENSEMBLE,
            inputs=ENSEMBLE_INPUTS,
            outputs=named.ensemble_outputs,
            parameters={MODEL_TYPE_PARAMETER: model_type} if model_type else {},
            steps=(
                EnsembleStep(
                    family.preprocess,
                    inputs=_same_names(t.name for t in ENSEMBLE_INPUTS),
                    outputs=_same_names(t.name for t in named.preprocess_outputs),
                ),
                EnsembleStep(
                    family.encoder_guard,
                    inputs={"image": "encoder_image", "input_size": "input_size"},
                    outputs=_same_names(t.name for t in named.encoder_outputs),
                ),
                EnsembleStep(
                    family.decoder,
                    inputs=named.decoder_feeds,
                    outputs={t.name: f"decoder_{t.name}" for t in named.decoder_outputs},
                ),
                EnsembleStep(
                    family.postprocess,
                    inputs={t.name: f"decoder_{t.name}" for t in named.decoder_outputs}
                    | _same_names(("input_size", "original_size")),
                    outputs=_same_names(t.name for t in named.ensemble_outputs),
                ),
            ),
        ),
        automatic.definition(family.name, tuple(t.name for t in named.encoder_outputs), settings),
    ]
