"""`<family>_automatic`: segment everything in one request, as `SamAutomaticMaskGenerator` with
`output_mode="coco_rle"`. The family is a config parameter: the same file serves HQ-SAM
(`hqsam_encoder` / `hqsam_decoder`) and any family exported with the same decoder interface.

    image bytes + generator parameters (each optional, official defaults)
      -> per crop: `<family>_encoder` once (BLS; its response cache answers an image seen before)
      -> `<family>_decoder` on points_per_batch single-point prompts per call
      -> thresholds, stability score, box NMS, small-region removal and COCO RLE here
    <- one row per mask: RLE counts, bbox, area, predicted_iou, stability_score, point, crop box

A bad image or parameter gets INVALID_ARGUMENT naming it; a failing model call fails only its
own request.
"""

import numpy as np
from perceptserve.model_repository.python_models import bls, inputs
from perceptserve.model_repository.python_models.responses import respond, respond_each

from perceptserve.automatic import parameters as generator_parameters
from perceptserve.automatic.generator import Generator
from perceptserve.hqsam.families import by_name
from perceptserve.hqsam.prompts import mask_selection
from perceptserve.imaging import decode_image
from perceptserve.parsing import comma_list
from perceptserve.settings import AutomaticLimits


class ServedModels:
    """The family's encoder and decoder, called through BLS (`generator.Models`)."""

    def __init__(self, config: dict) -> None:
        self.encoder = config["encoder_model"]
        self.decoder = config["decoder_model"]
        self.features = list(comma_list(config["encoder_outputs"]))
        self.family = by_name(config["family"])

    def encode(self, image, input_size):
        feeds = {"image": image[None], "input_size": np.array([input_size], dtype=np.int64)}
        return bls.call(self.encoder, feeds, self.features)

    def decode(self, features, point_coords, point_labels, flags):
        n = len(point_coords)
        feeds = {
            **features,
            "point_coords": point_coords,
            "point_labels": point_labels,
            "mask_input": np.zeros((n, 1, 256, 256), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
        }
        feeds.update(mask_selection(self.family, flags["multimask_output"], flags["hq_token_only"]))
        out = bls.call(self.decoder, feeds, ["low_res_logits", "iou_predictions"])
        return out["low_res_logits"], out["iou_predictions"]


class TritonPythonModel:
    def initialize(self, args):
        config = inputs.parameters(inputs.model_config(args))
        self.models = ServedModels(config)
        self.max_image_pixels = int(config["max_image_pixels"])
        self.limits = AutomaticLimits(
            **{
                name: type(getattr(AutomaticLimits(), name))(config[name])
                for name in AutomaticLimits.__dataclass_fields__
            }
        )

    def _process(self, request):
        image = decode_image(inputs.one(request, "image", kind="encoded image"), self.max_image_pixels)
        given = {
            name: inputs.one(request, name)
            for name in generator_parameters.NAMES
            if inputs.optional(request, name) is not None
        }
        generator = Generator(
            self.models, generator_parameters.validated(given, self.limits), self.limits.upscale_chunk_pixels
        )
        try:
            found = generator.generate(image)
        except bls.ModelCallError as exc:
            return exc.response()
        return respond(
            {
                "rle_counts": np.array([rle["counts"].encode("ascii") for rle in found.rles], dtype=np.object_),
                "image_size": np.array(image.shape[:2], dtype=np.int64),
                "boxes": found.boxes.astype(np.int64).reshape(-1, 4),
                "areas": found.areas(),
                "predicted_iou": found.predicted_iou.astype(np.float32),
                "stability_score": found.stability_score.astype(np.float32),
                "point_coords": found.points.astype(np.float64).reshape(-1, 2),
                "crop_boxes": found.crop_boxes.astype(np.int64).reshape(-1, 4),
                "stage_seconds": generator.times.as_array(),
            }
        )

    def execute(self, requests):
        return respond_each(requests, self._process)
