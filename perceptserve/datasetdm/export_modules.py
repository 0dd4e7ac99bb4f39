"""The diffusion parts as plain tensor-in, tensor-out modules: what goes into ONNX.

Each wraps the diffusers / transformers module unchanged; the tensor names are in
`perceptserve.model_repository.datasetdm`.
"""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """input_ids (B, 77) int64 -> CLIP's last hidden state (B, 77, D)."""

    def __init__(self, text_encoder) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


class VaeEncoder(nn.Module):
    """image (B, 3, H, W) in [-1, 1] -> the latent distribution's mean and standard deviation,
    both scaled by the VAE's scaling factor (0.18215): `latents + latents_std * noise` is
    DatasetDM's `latent_dist.sample() * 0.18215`, `latents` alone its deterministic mode."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(image, return_dict=False)[0]
        scale = self.vae.config.scaling_factor
        return posterior.mean * scale, posterior.std * scale


class VaeDecoder(nn.Module):
    """latents (B, 4, h, w), scaled as the UNet sees them -> image (B, 3, 8h, 8w) in [0, 1], as
    `StableDiffusionPipeline(output_type="np")` returns it before quantisation."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)
