"""Calling another served model from a python model (Triton's BLS), with the failure kept apart
from the caller's mistakes: a `ModelCallError` is the server's fault (INTERNAL), never
INVALID_ARGUMENT."""

import numpy as np
import triton_python_backend_utils as pb_utils


class ModelCallError(RuntimeError):
    """A model called through BLS failed; the server's fault, not the caller's."""


def call(model: str, feeds: dict, outputs) -> dict:
    """Run `model` on `feeds` (name -> array) and return the named outputs as arrays."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()],
        requested_output_names=list(outputs),
    )
    response = request.exec()
    if response.has_error():
        raise ModelCallError(f"{model} failed: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}
