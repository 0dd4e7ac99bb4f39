"""DatasetDM annotate, first step: untrusted image bytes, caption and class names -> the VAE
encoder's image and the text encoder's ids.

Each request is checked on its own: a bad one gets INVALID_ARGUMENT naming the problem and the
others of the same batch go on. The tokenizer is the diffusion folder's, copied into this
version folder at export.
"""

import os

import numpy as np
from perceptserve.model_repository.python_models import inputs
from perceptserve.model_repository.python_models.responses import respond, respond_each
from PIL import Image
from transformers import CLIPTokenizer

from perceptserve.datasetdm import validation
from perceptserve.datasetdm.instances import category_labels
from perceptserve.imaging import decode_image
from perceptserve.parsing import comma_list


class TritonPythonModel:
    def initialize(self, args):
        parameters = inputs.parameters(inputs.model_config(args))
        self.limits = validation.Limits.from_parameters(parameters)
        self.max_image_pixels = int(parameters["max_image_pixels"])
        self.timestep = int(parameters["annotation_timestep"])
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self.categories = comma_list(parameters["instance_categories"])

    def _process(self, request):
        image = decode_image(inputs.one(request, "image", kind="encoded image"), self.max_image_pixels)
        prompt = validation.text(inputs.one(request, "prompt"), "prompt")
        names = validation.class_names(inputs.required(request, "class_names").reshape(-1), self.limits)
        seed = inputs.optional(request, "seed")
        seed = validation.seeds(np.zeros(1) if seed is None else seed, self.limits)[0]
        # Which tasks the caller reads is its choice of outputs; asking for one not served is refused.
        validation.tasks(inputs.optional(request, "tasks"), self.limits)
        limits = validation.instance_limits(
            inputs.optional(request, "max_instances"), inputs.optional(request, "score_threshold"), self.limits
        )
        height, width = image.shape[:2]
        size = validation.processing_size(height, width, self.limits.max_side)
        if size != (height, width):
            image = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))
        tensors = {
            "vae_image": (image.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1).astype(np.float32),
            "input_ids": validation.token_ids(self.tokenizer, prompt, "prompt")[None],
            "uncond_ids": validation.token_ids(self.tokenizer, "", "", allow_empty=True)[None],
            "class_ids": np.stack(
                [validation.token_ids(self.tokenizer, name, f"class name {name!r}") for name in names]
            ),
            "noise_seed": np.array([seed], dtype=np.int64),
            "timestep": np.array([self.timestep], dtype=np.int64),
            "original_size": np.array([height, width], dtype=np.int64),
            "instance_labels": category_labels(names, self.categories),
            "instance_limits": np.array(limits, dtype=np.float32),
        }
        return respond(tensors)

    def execute(self, requests):
        return respond_each(requests, self._process)
