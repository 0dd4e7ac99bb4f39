"""Calling another served model from a python model (Triton's BLS), with the failure kept apart
from the caller's mistakes: a `ModelCallError` is the server's fault, never INVALID_ARGUMENT.
It is answered UNAVAILABLE where retrying will pass (the called model's stub died and
`perceptserve serve` restarts the server, its queue is full, the server is stopping; our clients
retry those), else INTERNAL."""

import numpy as np
import triton_python_backend_utils as pb_utils

# What a lost model looks like from a BLS caller: its stub died, it is out of memory, its queue is
# full, or the server is stopping or not ready (a restart: "Server not ready" reached a request the
# guard sent while `perceptserve serve` restarted tritonserver). All pass once the server serves again.
RETRYABLE = (
    "is not healthy",
    "Failed to allocate memory",
    "bad_alloc",
    "queue size",
    "stopping",
    "not ready",
    "unavailable",
)


def retryable(error) -> bool:
    code = error.code() if hasattr(error, "code") else None
    return code == pb_utils.TritonError.UNAVAILABLE or any(text in error.message() for text in RETRYABLE)


def failure(model: str, error) -> "pb_utils.TritonError":
    """The error to answer for `model`'s `error`: UNAVAILABLE (retryable) or INTERNAL."""
    message = f"{model} failed: {error.message()}"
    if retryable(error):
        return pb_utils.TritonError(f"{message} (retryable)", pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError(message)


class ModelCallError(RuntimeError):
    """A model called through BLS failed; the server's fault, not the caller's."""

    def __init__(self, model: str, error) -> None:
        super().__init__(f"{model} failed: {error.message()}")
        self.model, self.error = model, error

    def response(self) -> "pb_utils.InferenceResponse":
        """A new error response (Triton 2.51 crashed on one TritonError shared by several responses)."""
        return pb_utils.InferenceResponse(error=failure(self.model, self.error))


def call(model: str, feeds: dict, outputs) -> dict:
    """Run `model` on `feeds` (name -> array) and return the named outputs as arrays."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()],
        requested_output_names=list(outputs),
    )
    response = request.exec()
    if response.has_error():
        raise ModelCallError(model, response.error())
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}
