"""Reading checkpoints safely and comparing them with a model, for every model family.

`torch.load(weights_only=True)` refuses a pickle that would run code; every other problem
(missing file, truncation, a dict that is not a state_dict) is a `CheckpointError` with a
one-line message. Each family says what a key mismatch means for its models.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from perceptserve.errors import UserError

DATA_PARALLEL_PREFIX = "module."


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit its model; the message is one line."""


def summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state_dict from `path`, unwrapped from a training checkpoint's `{"model": ...}` and from
    DataParallel's `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{what} {path} is not a plain weights file (refused by weights_only loading): {_first_line(exc)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{what} {path} cannot be read (truncated or corrupt?): {_first_line(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} does not hold a state_dict of tensors")
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


@dataclass
class Mismatch:
    """How a state_dict differs from a model's."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]  # "key (checkpoint shape) != (model shape)"

    @classmethod
    def between(cls, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> Mismatch:
        expected = model.state_dict()
        return cls(
            missing=[k for k in expected if k not in state],
            unexpected=[k for k in state if k not in expected],
            wrong_shape=[
                f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                for k, v in expected.items()
                if k in state and state[k].shape != v.shape
            ],
        )
