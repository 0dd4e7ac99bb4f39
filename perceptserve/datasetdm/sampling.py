"""The denoising loop and the noise DatasetDM draws, written once for the served models.

The models that run the networks are passed in as callables, so the same loop drives the
UNet through Triton (BLS calls from `datasetdm_generate`) and anything else that maps tensors
to tensors. The random numbers are drawn exactly as diffusers draws them: for the same seed,
steps, guidance and scheduler the loop reproduces `StableDiffusionPipeline`'s latents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Extras = TypeVar("Extras")
# (latents (B, C, h, w), timesteps (B,)) -> (uncond noise, text noise), each (B, C, h, w)
Denoiser = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# (latents (B, C, h, w), timesteps (B,)) -> (uncond noise, text noise, whatever else the last step yields)
LastStep = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor, Extras]"]


def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """(len(seeds), C, h, w): each image's latents from its own CPU generator, as
    `StableDiffusionPipeline(generator=torch.Generator("cpu").manual_seed(seed))` draws them
    (`randn_tensor` of the one-image shape), so every image is reproducible on its own,
    whatever batch it was generated in (DatasetDM names its files by these seeds)."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds])


def annotation_latents(
    mean: torch.Tensor, std: torch.Tensor, seed: int, timestep: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DatasetDM's training input for a real image: `latent_dist.sample()` (scaled), then
    `scheduler.add_noise(latents, noise, t)`, both draws from one generator seeded with `seed`
    (the sample's noise first, as `DiagonalGaussianDistribution.sample(generator)` draws it)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = mean + std * torch.randn(mean.shape, generator=generator)
    noise = torch.randn(mean.shape, generator=generator)
    alpha = alphas_cumprod[timestep].to(mean.dtype)
    return alpha.sqrt() * latents + (1 - alpha).sqrt() * noise


def denoise(
    scheduler, latents: torch.Tensor, steps: int, guidance: torch.Tensor, unet: Denoiser, last: LastStep
) -> tuple[torch.Tensor, Extras]:
    """Classifier-free guided sampling with `scheduler` (a fresh diffusers scheduler: PNDM keeps
    its history in the instance). Every step but the last calls `unet`, which predicts the
    noise of both halves of classifier-free guidance (uncond, text); the last calls `last`,
    which also yields what DatasetDM reads there (the feature groups). `guidance` is per image
    (B,). Returns the final latents and those extras."""
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    scale = guidance.to(latents.dtype)[:, None, None, None]
    timesteps = scheduler.timesteps
    extras = None
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        if index == len(timesteps) - 1:
            uncond, text, extras = last(model_input, t.repeat(latents.shape[0]))
        else:
            uncond, text = unet(model_input, t.repeat(latents.shape[0]))
        noise = uncond + scale * (text - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents, extras
