"""Strict loading of DatasetDM decoder checkpoints (what its training scripts save:
`torch.save(seg_model.state_dict())`, keys prefixed `module.` when trained under DataParallel).

DatasetDM's own scripts retry a failed strict load with the prefix cut off; here the prefix is
recognised up front and any other mismatch is an error naming the keys, in one line.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

DATA_PARALLEL_PREFIX = "module."


class CheckpointError(ValueError):
    """A decoder checkpoint that cannot be read or does not fit; the message is one line."""


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read with `weights_only=True` (a pickle that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"decoder checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"decoder checkpoint {path} is not a plain weights file: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"decoder checkpoint {path} cannot be read (truncated or corrupt?): {_first_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"decoder checkpoint {path} does not hold a state_dict of tensors")
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module`, failing on any missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    unexpected = [key for key in state if key not in expected]
    missing = [key for key in expected if key not in state]
    if wrong_shape:
        raise CheckpointError(f"{what} checkpoint does not fit this model (another UNet or decoder size?): {_summarise(wrong_shape)}")
    if unexpected:
        raise CheckpointError(f"{what} checkpoint has tensors this decoder lacks (another task's decoder?): {_summarise(unexpected)}")
    if missing:
        raise CheckpointError(f"{what} checkpoint is missing tensors: {_summarise(missing)}")
    module.load_state_dict(state, strict=True)
