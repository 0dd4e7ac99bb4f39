"""Strict loading of HQ-SAM checkpoints in the official format (a plain `state_dict`).

The official builders call `load_state_dict(strict=False)` and print the result, so a plain SAM
checkpoint silently yields an HQ-SAM whose HQ token and fusion convs are random. Here every
mismatch is an error with a one-line message, unless the caller explicitly allows the HQ parts
to be missing.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from perceptserve.errors import UserError

if TYPE_CHECKING:
    from .official import Sam

# Parameters that HQ-SAM adds to SAM's mask decoder (see `MaskDecoderHQ.__init__`).
HQ_PREFIXES = (
    "mask_decoder.hf_token.",
    "mask_decoder.hf_mlp.",
    "mask_decoder.compress_vit_feat.",
    "mask_decoder.embedding_encoder.",
    "mask_decoder.embedding_maskfeature.",
)


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the model; the message is one line for the CLI."""


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `weights_only=True`: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a plain weights file (refused by weights_only loading): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): {first}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict of tensors")
    return state


def load_strict(sam: "Sam", state: dict[str, torch.Tensor], *, allow_missing_hq: bool = False) -> None:
    """Load `state` into `sam`, failing on any missing, unexpected or mis-shaped tensor."""
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong_shape:
        raise CheckpointError(
            f"checkpoint is for another model size: {_summarise(wrong_shape)}"
        )
    if unexpected:
        raise CheckpointError(f"checkpoint has tensors this model lacks: {_summarise(unexpected)}")
    missing_hq = [k for k in missing if k.startswith(HQ_PREFIXES)]
    missing_other = [k for k in missing if not k.startswith(HQ_PREFIXES)]
    if missing_other:
        raise CheckpointError(
            f"checkpoint is truncated or for another model: missing {_summarise(missing_other)}"
        )
    if missing_hq:
        if not allow_missing_hq:
            raise CheckpointError(
                "checkpoint has no HQ-SAM parts (a plain SAM checkpoint?): missing "
                f"{_summarise(missing_hq)}; pass --allow-missing-hq to export with random HQ parts"
            )
        warnings.warn(
            f"THE HQ-SAM PARTS ARE RANDOM: the checkpoint lacks {len(missing_hq)} HQ tensors "
            f"({_summarise(missing_hq, 2)}); masks will be wrong until a real HQ-SAM checkpoint is used",
            stacklevel=2,
        )
    sam.load_state_dict(state, strict=False)
