"""DatasetDM annotate: the VAE's latent distribution -> a sample of it, noised to the annotation
timestep (`perceptserve.datasetdm.sampling.annotation_latents`), with the request's seed, so a
served annotation is reproducible. The noise schedule is the diffusion folder's scheduler,
copied into this version folder at export."""

import os

import torch
from diffusers import PNDMScheduler
from perceptserve.model_repository.python_models import inputs
from perceptserve.model_repository.python_models.responses import respond

from perceptserve.datasetdm.sampling import annotation_latents


def _input(request, name):
    return torch.from_numpy(inputs.required(request, name))


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"], "scheduler")
        self.alphas_cumprod = PNDMScheduler.from_pretrained(folder).alphas_cumprod

    def _process(self, request):
        mean, std = _input(request, "latents"), _input(request, "latents_std")
        seed, timestep = int(_input(request, "noise_seed")[0]), int(_input(request, "timestep")[0])
        noisy = annotation_latents(mean, std, seed, timestep, self.alphas_cumprod)
        return respond({"noisy_latents": noisy.numpy()})

    def execute(self, requests):
        return [self._process(request) for request in requests]
