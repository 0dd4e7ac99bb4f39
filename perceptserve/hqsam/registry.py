"""The model types of each SAM family, built with that family's official builders
(`official.BUILDERS`: `segment_anything_hq`, or `segment_anything` and `mobile_sam`).

The official registries build a model and load a checkpoint in one call (HQ-SAM's non-strictly);
we keep the two apart so that loading can be strict (see `checkpoint_loading.py`). A `ViTConfig` also
describes the small ViTs that tests build with the same `_build_sam` code path as the real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import HQSAM, Family
from .official import BUILDERS, Sam


@dataclass(frozen=True)
class ViTConfig:
    """An `ImageEncoderViT` size, as `_build_sam` takes it."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    def build(self, family: Family) -> Sam:
        return BUILDERS[family.name].vit(
            encoder_embed_dim=self.embed_dim,
            encoder_depth=self.depth,
            encoder_num_heads=self.num_heads,
            encoder_global_attn_indexes=list(self.global_attn_indexes),
            checkpoint=None,
        )


@dataclass(frozen=True)
class TinyViTConfig:
    """MobileSAM's TinyViT encoder (`build_sam_vit_t`): MobileSAM's `vit_t`, Light HQ-SAM's
    `vit_tiny`."""

    def build(self, family: Family) -> Sam:
        return BUILDERS[family.name].tiny(checkpoint=None)


# A SAM-family architecture (encoder size); not Triton's model config.
Architecture = ViTConfig | TinyViTConfig

# The ViT sizes by model type (every family names them alike); the tiny types
# (`model_types.TINY_MODEL_TYPES`) are `TinyViTConfig`.
VIT_SIZES: dict[str, ViTConfig] = {
    "vit_b": ViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def resolve(model: str | Architecture, family: Family = HQSAM) -> Architecture:
    """A model type name of `family` or a config (tests pass small `ViTConfig`s) to a config."""
    if not isinstance(model, str):
        return model
    if model not in family.model_types:
        raise ValueError(f"unknown {family.name} model type {model!r}; choose one of {', '.join(family.model_types)}")
    return VIT_SIZES.get(model, TinyViTConfig())


def build_reference(model: str | Architecture, family: Family = HQSAM) -> Sam:
    """The family's official module, eval mode, parameters as the builder initialised them."""
    sam = resolve(model, family).build(family)
    sam.eval()
    return sam


def randomize_(sam: Sam, seed: int) -> Sam:
    """Random weights for a model with no checkpoint.

    The builders leave position embeddings and relative-position tables at zero, which would let
    an export that mishandles them pass every parity check; give every parameter random values.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if param.dim() == 1 and name.endswith("weight"):  # norm scales stay near 1
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)
    return sam
