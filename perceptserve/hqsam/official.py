"""The official `segment_anything_hq` package, imported once with its import-time noise silenced
(timm's deprecation notices and TinyViT re-registering timm's model names). Everything in
perceptserve that uses the reference model imports it from here."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from segment_anything_hq import SamAutomaticMaskGenerator, SamPredictor
    from segment_anything_hq.build_sam import _build_sam, build_sam_vit_t
    from segment_anything_hq.modeling import Sam
    from segment_anything_hq.modeling.tiny_vit_sam import PatchMerging
    from segment_anything_hq.utils.transforms import ResizeLongestSide

__all__ = [
    "PatchMerging",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "_build_sam",
    "build_sam_vit_t",
]
