"""The frozen Stable Diffusion 1.x parts DatasetDM builds on, read from a diffusers folder.

The components are loaded one by one (not through `StableDiffusionPipeline`), so a folder with a
safety checker needs no extra weights, and nothing is fetched from the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .features import FeatureLayout

REQUIRED = ("unet", "vae", "text_encoder", "tokenizer")


@dataclass
class Diffusion:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object

    @property
    def tokens(self) -> int:
        """The text encoder's sequence length (77 for CLIP): every prompt is padded to it."""
        return self.text_encoder.config.max_position_embeddings

    @property
    def text_width(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def vae_scale(self) -> int:
        """Image pixels per latent pixel (8 for SD 1.x)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout.from_unet_config(self.unet.config, tokens=self.tokens)

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            texts, padding="max_length", max_length=self.tokens, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """CLIP's last hidden state, (len(texts), tokens, width), as SD and DatasetDM use it."""
        return self.text_encoder(self.token_ids(texts))[0]


def load(folder: str | Path) -> Diffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a Stable Diffusion folder in the diffusers format (missing {', '.join(missing)}/)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # low_cpu_mem_usage=False: the default needs `accelerate`, and without it warns on every load.
    parts = Diffusion(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", low_cpu_mem_usage=False),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
    )
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.eval().requires_grad_(False)
    return parts
