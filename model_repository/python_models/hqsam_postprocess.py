"""HQ-SAM postprocessing: low-resolution logits -> masks at the original image size, as
`SamPredictor.predict` computes them (upscale, crop the padding, resize, threshold); the
decoder's logits and IoU predictions are handed on as they are (the ensemble's last step)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from perceptserve.model_repository.python_models.responses import pass_through_names, passed_through

from perceptserve.hqsam.geometry import upscale_logits


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.threshold = float(config["parameters"]["mask_threshold"]["string_value"])
        self.passed = pass_through_names(config)
        # Once before Triton reports the model ready: the first request paid this path's first
        # call (about 0.4 s on this 2-core machine) on top of its image size's resize matrices.
        upscale_logits(np.zeros((1, 1, 256, 256), np.float32), (1024, 683), (600, 400))

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "low_res_logits").as_numpy()
            input_size = pb_utils.get_input_tensor_by_name(request, "input_size").as_numpy().reshape(2)
            original_size = pb_utils.get_input_tensor_by_name(request, "original_size").as_numpy().reshape(2)
            masks = upscale_logits(logits, tuple(input_size), tuple(original_size)) > self.threshold
            tensors = [pb_utils.Tensor("masks", masks)] + passed_through(request, self.passed)
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
