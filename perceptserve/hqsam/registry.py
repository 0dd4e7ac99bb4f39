"""The HQ-SAM model types, built with the official `segment_anything_hq` builders.

The official registry builds a model and loads a checkpoint non-strictly in one call; we keep
the two apart so that loading can be strict (see `checkpoint_loading.py`). A `ViTConfig` also describes
the small ViTs that tests build with the same `_build_sam` code path as the real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perceptserve.model_types import HQSAM_MODEL_TYPES

from .official import Sam, _build_sam, build_sam_vit_t


@dataclass(frozen=True)
class ViTConfig:
    """An `ImageEncoderViT` size, as `_build_sam` takes it."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    def build(self) -> Sam:
        return _build_sam(
            encoder_embed_dim=self.embed_dim,
            encoder_depth=self.depth,
            encoder_num_heads=self.num_heads,
            encoder_global_attn_indexes=list(self.global_attn_indexes),
            checkpoint=None,
        )


@dataclass(frozen=True)
class TinyViTConfig:
    """Light HQ-SAM: MobileSAM's TinyViT encoder (`build_sam_vit_t`)."""

    def build(self) -> Sam:
        return build_sam_vit_t(checkpoint=None)


# An HQ-SAM architecture (encoder size); not Triton's model config.
Architecture = ViTConfig | TinyViTConfig

# The names are `model_types.HQSAM_MODEL_TYPES` (torch-free, for the CLI), in the same order.
MODEL_TYPES: dict[str, Architecture] = dict(
    zip(
        HQSAM_MODEL_TYPES,
        (
            TinyViTConfig(),
            ViTConfig(768, 12, 12, (2, 5, 8, 11)),
            ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
            ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
        ),
        strict=True,
    )
)


def resolve(model: str | Architecture) -> Architecture:
    """A model type name or a config (tests pass small `ViTConfig`s) to a config."""
    if isinstance(model, str):
        try:
            return MODEL_TYPES[model]
        except KeyError:
            raise ValueError(f"unknown model type {model!r}; choose one of {', '.join(MODEL_TYPES)}") from None
    return model


def build_reference(model: str | Architecture) -> Sam:
    """The official HQ-SAM module, eval mode, parameters as the builder initialised them."""
    sam = resolve(model).build()
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
