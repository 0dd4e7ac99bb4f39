"""HQ-SAM postprocessing: low-resolution logits -> masks at the original image size, as
`SamPredictor.predict` computes them (upscale, crop the padding, resize, threshold); the
decoder's logits and IoU predictions are handed on as they are (the ensemble's last step)."""

import numpy as np
from perceptserve.model_repository.python_models import inputs
from perceptserve.model_repository.python_models.responses import respond

from perceptserve.hqsam.geometry import upscale_logits


class TritonPythonModel:
    def initialize(self, args):
        config = inputs.model_config(args)
        self.threshold = float(inputs.parameters(config)["mask_threshold"])
        self.passed = inputs.pass_through_names(config)
        # Once before Triton reports the model ready: the first request paid this path's first
        # call (about 0.4 s on this 2-core machine) on top of its image size's resize matrices.
        upscale_logits(np.zeros((1, 1, 256, 256), np.float32), (1024, 683), (600, 400))

    def _process(self, request):
        logits = inputs.required(request, "low_res_logits")
        input_size = inputs.required(request, "input_size").reshape(2)
        original_size = inputs.required(request, "original_size").reshape(2)
        masks = upscale_logits(logits, tuple(input_size), tuple(original_size)) > self.threshold
        return respond({"masks": masks, **inputs.passed_through(request, self.passed)})

    def execute(self, requests):
        return [self._process(request) for request in requests]
