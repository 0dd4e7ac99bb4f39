"""The `<family>_automatic` model ("segment everything"): one definition for every SAM-like
family, parameterised by the family's encoder and decoder (see python_models/automatic.py).

Its tensors are the public API (README, "The `hqsam_automatic` API"): the image, each generator
parameter as an optional one-value input, and one row per mask out.
"""

from __future__ import annotations

from dataclasses import asdict

from perceptserve.automatic import parameters
from perceptserve.settings import Settings

from .admission import guard_name
from .definitions import ModelDefinition, Runtime, Tensor

SUFFIX = "_automatic"

INPUTS = (Tensor("image", "STRING", (1,)),) + tuple(
    Tensor(name, parameters.wire_type(name), (1,), optional=True) for name in parameters.NAMES
)
OUTPUTS = (
    Tensor("rle_counts", "STRING", (-1,)),  # COCO compressed RLE counts, one per mask
    Tensor("image_size", "INT64", (2,)),  # (height, width): every RLE's size
    Tensor("boxes", "INT64", (-1, 4)),  # x0, y0, x1, y1 (inclusive; the records' bbox is XYWH)
    Tensor("areas", "INT64", (-1,)),
    Tensor("predicted_iou", "FP32", (-1,)),
    Tensor("stability_score", "FP32", (-1,)),
    Tensor("point_coords", "FP64", (-1, 2)),  # the prompt point, (x, y) image pixels
    Tensor("crop_boxes", "INT64", (-1, 4)),  # x0, y0, x1, y1
    Tensor("stage_seconds", "FP64", (3,)),  # encoder, decoder, post-processing
)


def model_name(family: str) -> str:
    return family + SUFFIX


def definition(family: str, encoder_outputs: tuple[str, ...], settings: Settings) -> ModelDefinition:
    """`<family>_automatic` over `<family>_encoder` and `<family>_decoder`. `encoder_outputs` are
    passed to the decoder under the same names; the decoder's mask-selection inputs follow from the
    family (`prompts.mask_selection`)."""
    serving = settings.automatic
    return ModelDefinition(
        name=model_name(family),
        runtime=Runtime.PYTHON,
        python_source="automatic.py",
        inputs=INPUTS,
        outputs=OUTPUTS,
        instances=serving.instances,
        parameters={
            "family": family,
            "encoder_model": guard_name(f"{family}_encoder"),  # batches and failures as the ensemble's
            "decoder_model": f"{family}_decoder",
            "encoder_outputs": ",".join(encoder_outputs),
            "max_image_pixels": str(settings.hqsam.max_image_pixels),
            **{name: str(value) for name, value in asdict(serving.limits).items()},
        },
    )
