"""What every python-backend model answers: its output tensors, or for a bad request
INVALID_ARGUMENT with the message, while the other requests of the same batch are served as usual."""

import numpy as np
import triton_python_backend_utils as pb_utils

from perceptserve.errors import InvalidRequest


def respond(tensors: dict[str, np.ndarray]) -> "pb_utils.InferenceResponse":
    """A response holding `tensors`, by output name (made contiguous, as Triton needs)."""
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in tensors.items()]
    )


def invalid_argument(exc: InvalidRequest) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))


def server_error(message: str) -> "pb_utils.InferenceResponse":
    """A failure that is the server's fault, not the caller's (Triton's INTERNAL)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def respond_each(requests, process) -> list:
    """`process(request)` for each request; an `InvalidRequest` answers only its own request."""
    responses = []
    for request in requests:
        try:
            responses.append(process(request))
        except InvalidRequest as exc:
            responses.append(invalid_argument(exc))
    return responses
