"""DatasetDM annotate, first step: untrusted image bytes, caption and class names -> the VAE
encoder's image and the text encoder's ids.

Each request is checked on its own: a bad one gets INVALID_ARGUMENT naming the problem and the
others of the same batch go on. The tokenizer is the diffusion folder's, copied into this
version folder at export.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from perceptserve.model_repository.python_models.responses import respond_each
from PIL import Image
from transformers import CLIPTokenizer

from perceptserve.datasetdm import validation
from perceptserve.datasetdm.instances import category_labels
from perceptserve.imaging import decode_image


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _one(request, name):
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    if value.size != 1:
        raise validation.RequestError(f"{name} must hold one value, got {value.size}")
    return value[0]


class TritonPythonModel:
    def initialize(self, args):
        parameters = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.limits = validation.Limits.from_parameters(parameters)
        self.max_image_pixels = int(parameters["max_image_pixels"])
        self.timestep = int(parameters["annotation_timestep"])
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self.categories = tuple(parameters["instance_categories"].split(","))

    def _process(self, request):
        image = decode_image(_one(request, "image"), self.max_image_pixels)
        prompt = validation.text(_one(request, "prompt"), "prompt")
        names = validation.class_names(
            pb_utils.get_input_tensor_by_name(request, "class_names").as_numpy().reshape(-1), self.limits
        )
        seed = _optional(request, "seed")
        seed = validation.seeds(np.zeros(1) if seed is None else seed, self.limits)[0]
        # Which tasks the caller reads is its choice of outputs; asking for one not served is refused.
        validation.tasks(_optional(request, "tasks"), self.limits)
        limits = validation.instance_limits(
            _optional(request, "max_instances"), _optional(request, "score_threshold"), self.limits
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
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])

    def execute(self, requests):
        return respond_each(requests, self._process)
