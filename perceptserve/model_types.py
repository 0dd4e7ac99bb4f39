"""The model types each family can be exported as, without importing torch: the CLI offers them
as choices (and answers `--help` at once), and the torch-side registry builds exactly these."""

from __future__ import annotations

HQSAM_MODEL_TYPES = ("vit_tiny", "vit_b", "vit_l", "vit_h")
# Plain SAM's ViTs (segment_anything) and MobileSAM's TinyViT (mobile_sam), as each package names them.
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")
# The same TinyViT architecture under each family's name: Light HQ-SAM's and MobileSAM's.
TINY_MODEL_TYPES = {"hqsam": "vit_tiny", "sam": "vit_t"}
