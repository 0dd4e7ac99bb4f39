"""The model types each family can be exported as, without importing torch: the CLI offers them
as choices (and answers `--help` at once), and the torch-side registry builds exactly these."""

from __future__ import annotations

HQSAM_MODEL_TYPES = ("vit_tiny", "vit_b", "vit_l", "vit_h")
