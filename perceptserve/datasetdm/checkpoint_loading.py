"""Strict loading of DatasetDM decoder checkpoints (what its training scripts save:
`torch.save(seg_model.state_dict())`, keys prefixed `module.` when trained under DataParallel).

DatasetDM's own scripts retry a failed strict load with the prefix cut off; here the prefix is
recognised up front and any other mismatch is an error naming the keys, in one line.
"""

from __future__ import annotations

import torch
from torch import nn

from perceptserve.checkpoint_reading import CheckpointError, Mismatch, read_state_dict, summarise

__all__ = ["CheckpointError", "load_strict", "read_state_dict"]


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module`, failing on any missing, unexpected or mis-shaped tensor."""
    mismatch = Mismatch.between(module, state)
    if mismatch.unexpected:
        raise CheckpointError(
            f"{what} checkpoint has tensors this decoder lacks (another task's decoder?): "
            f"{summarise(mismatch.unexpected)}"
        )
    if mismatch.wrong_shape:
        raise CheckpointError(
            f"{what} checkpoint does not fit this model (another UNet or decoder size?): "
            f"{summarise(mismatch.wrong_shape)}"
        )
    if mismatch.missing:
        raise CheckpointError(f"{what} checkpoint is missing tensors: {summarise(mismatch.missing)}")
    module.load_state_dict(state, strict=True)
