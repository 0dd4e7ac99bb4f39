"""HQ-SAM postprocessing: low-resolution logits -> masks at the original image size, as
`SamPredictor.predict` computes them (upscale, crop the padding, resize, threshold)."""

import json

import triton_python_backend_utils as pb_utils

from perceptserve.hqsam.geometry import upscale_logits


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.threshold = float(parameters["mask_threshold"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "low_res_logits").as_numpy()
            input_size = pb_utils.get_input_tensor_by_name(request, "input_size").as_numpy().reshape(2)
            original_size = pb_utils.get_input_tensor_by_name(request, "original_size").as_numpy().reshape(2)
            masks = upscale_logits(logits, tuple(input_size), tuple(original_size)) > self.threshold
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("masks", masks)]))
        return responses
