"""The official packages of each SAM family, imported once with their import-time noise silenced
(timm's deprecation notices, and TinyViT re-registering timm's model names in two packages).
Everything in perceptserve that uses a reference model imports it from here.

- HQ-SAM: `segment_anything_hq` (its ViTs and Light HQ-SAM's TinyViT).
- plain SAM: `segment_anything` (ViTs); MobileSAM: `mobile_sam` (TinyViT, SAM's decoder).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from mobile_sam.build_sam import build_sam_vit_t as build_mobile_sam_vit_t
    from mobile_sam.modeling.tiny_vit_sam import PatchMerging as MobileSamPatchMerging
    from segment_anything.build_sam import _build_sam as build_plain_sam
    from segment_anything.modeling.image_encoder import Attention as SamViTAttention
    from segment_anything_hq import SamAutomaticMaskGenerator, SamPredictor
    from segment_anything_hq.build_sam import _build_sam, build_sam_vit_t
    from segment_anything_hq.modeling import Sam
    from segment_anything_hq.modeling.image_encoder import Attention as HQSamViTAttention
    from segment_anything_hq.modeling.tiny_vit_sam import PatchMerging
    from segment_anything_hq.utils.transforms import ResizeLongestSide

__all__ = [
    "BUILDERS",
    "Builders",
    "HQSamViTAttention",
    "MobileSamPatchMerging",
    "PatchMerging",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "SamViTAttention",
    "_build_sam",
    "build_sam_vit_t",
    "predictor_for",
]


@dataclass(frozen=True)
class Builders:
    """A family's official builders: `vit(embed_dim, depth, heads, global_attn_indexes,
    checkpoint)` (`_build_sam`) and `tiny(checkpoint)` (`build_sam_vit_t`)."""

    vit: Callable
    tiny: Callable


BUILDERS = {
    "hqsam": Builders(vit=_build_sam, tiny=build_sam_vit_t),
    "sam": Builders(vit=build_plain_sam, tiny=build_mobile_sam_vit_t),
}


def package_of(model) -> object:
    """The official package a model was built by (`segment_anything_hq`, `segment_anything` or
    `mobile_sam`), from its class's module."""
    return sys.modules[type(model).__module__.split(".")[0]]


def predictor_for(model):
    """The official `SamPredictor` of the package that built `model`: the parity reference."""
    return package_of(model).SamPredictor(model)
