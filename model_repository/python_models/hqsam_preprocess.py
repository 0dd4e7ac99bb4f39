"""SAM-family preprocessing (the `family` parameter: `hqsam` or `sam`): untrusted image bytes and
prompts -> the encoder's and decoder's inputs.

Each request is checked on its own: a bad one gets INVALID_ARGUMENT naming the problem and the
others of the same batch go on.
"""

import numpy as np
from perceptserve.model_repository.hqsam import tensors as family_tensors
from perceptserve.model_repository.python_models import inputs
from perceptserve.model_repository.python_models.responses import respond, respond_each

from perceptserve.hqsam.families import by_name
from perceptserve.hqsam.geometry import resize_and_pad
from perceptserve.hqsam.prompts import PromptLimits, build_decoder_prompts, mask_selection
from perceptserve.imaging import decode_image, encode_png

PROMPT_INPUTS = ("point_coords", "point_labels", "boxes", "mask_input")


def _flag(request, name):
    return bool(inputs.one(request, name, False, kind="boolean"))


class TritonPythonModel:
    def initialize(self, args):
        parameters = inputs.parameters(inputs.model_config(args))
        self.max_image_pixels = int(parameters["max_image_pixels"])
        self.limits = PromptLimits(int(parameters["max_prompt_sets"]), int(parameters["max_points"]))
        self.family = by_name(parameters["family"])
        self.decoder_feeds = family_tensors(self.family).decoder_feeds
        self._warm_up()

    def _warm_up(self):
        """Decode, resize and map a prompt once before Triton reports the model ready: the first
        request would otherwise pay Pillow's plugin loading and these functions' first calls."""
        image = decode_image(encode_png(np.zeros((48, 64, 3), np.uint8)), self.max_image_pixels)
        points = np.array([[[8.0, 8.0]]], np.float32)
        build_decoder_prompts(image.shape[:2], self.limits, points, np.ones((1, 1), np.int32))
        resize_and_pad(image)

    def _process(self, request):
        image = decode_image(inputs.one(request, "image", kind="encoded image"), self.max_image_pixels)
        original_size = image.shape[:2]
        prompts = build_decoder_prompts(
            original_size, self.limits, **{name: inputs.optional(request, name) for name in PROMPT_INPUTS}
        )
        padded, input_size = resize_and_pad(image)
        tensors = {
            "encoder_image": padded[None],
            "input_size": np.array([input_size], dtype=np.int64),
            "original_size": np.array(original_size, dtype=np.int64),
            "decoder_point_coords": prompts.point_coords,
            "decoder_point_labels": prompts.point_labels,
            "decoder_mask_input": prompts.mask_input,
            "has_mask_input": prompts.has_mask_input,
        }
        selection = mask_selection(self.family, _flag(request, "multimask_output"), _flag(request, "hq_token_only"))
        tensors.update({self.decoder_feeds[name]: value for name, value in selection.items()})
        return respond(tensors)

    def execute(self, requests):
        return respond_each(requests, self._process)
