"""What every client of perceptserve's served models shares: building Triton's request tensors
with `tritonclient.grpc` or its `aio` twin, and turning a refusal into a `ClientError` that
carries the server's status (INVALID_ARGUMENT for bad input) and message."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from tritonclient.utils import InferenceServerException

from .errors import ClientError


def infer_input(module, name: str, array: np.ndarray, dtype: str):
    """`module.InferInput` holding `array`; `module` is `tritonclient.grpc` or `tritonclient.grpc.aio`."""
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def utf8_strings(values: Sequence[str]) -> np.ndarray:
    """A BYTES tensor's array of UTF-8 encoded `values`."""
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)


def to_client_error(exc: InferenceServerException) -> ClientError:
    """The server's refusal as a `ClientError` with the gRPC status name (without `StatusCode.`)."""
    status = (exc.status() or "").replace("StatusCode.", "") or None
    return ClientError(exc.message() or str(exc), status)


@contextmanager
def server_errors() -> Iterator[None]:
    """Within the block, a refusal from tritonclient (sync or `aio`) is raised as a `ClientError`
    (`to_client_error`), without the tritonclient traceback."""
    try:
        yield
    except InferenceServerException as exc:
        raise to_client_error(exc) from None


def requested_outputs(module, names: Sequence[str]) -> list:
    """`module.InferRequestedOutput` for each of `names`; `module` as in `infer_input`."""
    return [module.InferRequestedOutput(name) for name in names]
