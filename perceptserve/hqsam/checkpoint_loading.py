"""Strict loading of SAM-family checkpoints in the official formats (a plain `state_dict`).

The official builders load non-strictly (HQ-SAM's) or not at all safely (`torch.load` without
`weights_only`), so a plain SAM checkpoint silently yields an HQ-SAM whose HQ token and fusion
convs are random. Here every mismatch is an error with a one-line message; a checkpoint of the
other family names the command that exports it. HQ-SAM's export may explicitly accept a plain
SAM checkpoint with random HQ parts.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from perceptserve.checkpoint_reading import CheckpointError, Mismatch, read_state_dict, summarise

from .families import HQSAM, SAM, Family, model_type_in

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


def _export_command(family: Family, model_type: str | None) -> str:
    command = f"perceptserve export {family.name}"
    return f"{command} --model-type {model_type_in(model_type, family)}" if model_type else command


def load_strict(
    sam: Sam,
    state: dict[str, torch.Tensor],
    *,
    family: Family = HQSAM,
    model_type: str | None = None,
    allow_missing_hq: bool = False,
) -> None:
    """Load `state` into `sam` (a model of `family`), failing on any missing, unexpected or
    mis-shaped tensor; `model_type` only names the right command in the messages."""
    mismatch = Mismatch.between(sam, state)
    if mismatch.wrong_shape:
        raise CheckpointError(f"checkpoint is for another model size: {summarise(mismatch.wrong_shape)}")
    hq_extra = [k for k in mismatch.unexpected if k.startswith(HQ_PREFIXES)]
    if hq_extra and len(hq_extra) == len(mismatch.unexpected) and not family.hq:
        raise CheckpointError(
            f"this is an HQ-SAM checkpoint ({summarise(hq_extra, 2)}): export it with "
            f"`{_export_command(HQSAM, model_type)}`"
        )
    if mismatch.unexpected:
        raise CheckpointError(f"checkpoint has tensors this model lacks: {summarise(mismatch.unexpected)}")
    missing_hq = [k for k in mismatch.missing if k.startswith(HQ_PREFIXES)]
    missing_other = [k for k in mismatch.missing if not k.startswith(HQ_PREFIXES)]
    if missing_other:
        raise CheckpointError(f"checkpoint is truncated or for another model: missing {summarise(missing_other)}")
    if missing_hq:
        if not allow_missing_hq:
            raise CheckpointError(
                f"this is a plain SAM checkpoint (no HQ-SAM parts: missing {summarise(missing_hq, 2)}): export it "
                f"with `{_export_command(SAM, model_type)}`, or pass --allow-missing-hq for HQ-SAM with random HQ parts"
            )
        warnings.warn(
            f"THE HQ-SAM PARTS ARE RANDOM: the checkpoint lacks {len(missing_hq)} HQ tensors "
            f"({summarise(missing_hq, 2)}); masks will be wrong until a real HQ-SAM checkpoint is used",
            stacklevel=2,
        )
    sam.load_state_dict(state, strict=False)
