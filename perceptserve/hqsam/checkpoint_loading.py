"""Strict loading of HQ-SAM checkpoints in the official format (a plain `state_dict`).

The official builders call `load_state_dict(strict=False)` and print the result, so a plain SAM
checkpoint silently yields an HQ-SAM whose HQ token and fusion convs are random. Here every
mismatch is an error with a one-line message, unless the caller explicitly allows the HQ parts
to be missing.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from perceptserve.checkpoint_reading import CheckpointError, Mismatch, read_state_dict, summarise

if TYPE_CHECKING:
    from .official import Sam

__all__ = ["CheckpointError", "HQ_PREFIXES", "load_strict", "read_state_dict"]

# Parameters that HQ-SAM adds to SAM's mask decoder (see `MaskDecoderHQ.__init__`).
HQ_PREFIXES = (
    "mask_decoder.hf_token.",
    "mask_decoder.hf_mlp.",
    "mask_decoder.compress_vit_feat.",
    "mask_decoder.embedding_encoder.",
    "mask_decoder.embedding_maskfeature.",
)


def load_strict(sam: Sam, state: dict[str, torch.Tensor], *, allow_missing_hq: bool = False) -> None:
    """Load `state` into `sam`, failing on any missing, unexpected or mis-shaped tensor."""
    mismatch = Mismatch.between(sam, state)
    if mismatch.wrong_shape:
        raise CheckpointError(f"checkpoint is for another model size: {summarise(mismatch.wrong_shape)}")
    if mismatch.unexpected:
        raise CheckpointError(f"checkpoint has tensors this model lacks: {summarise(mismatch.unexpected)}")
    missing_hq = [k for k in mismatch.missing if k.startswith(HQ_PREFIXES)]
    missing_other = [k for k in mismatch.missing if not k.startswith(HQ_PREFIXES)]
    if missing_other:
        raise CheckpointError(f"checkpoint is truncated or for another model: missing {summarise(missing_other)}")
    if missing_hq:
        if not allow_missing_hq:
            raise CheckpointError(
                "checkpoint has no HQ-SAM parts (a plain SAM checkpoint?): missing "
                f"{summarise(missing_hq)}; pass --allow-missing-hq to export with random HQ parts"
            )
        warnings.warn(
            f"THE HQ-SAM PARTS ARE RANDOM: the checkpoint lacks {len(missing_hq)} HQ tensors "
            f"({summarise(missing_hq, 2)}); masks will be wrong until a real HQ-SAM checkpoint is used",
            stacklevel=2,
        )
    sam.load_state_dict(state, strict=False)
