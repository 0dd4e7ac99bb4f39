"""What every python-backend model does with a bad request: INVALID_ARGUMENT with the message,
and the other requests of the same batch are served as usual."""

import triton_python_backend_utils as pb_utils

from perceptserve.errors import InvalidRequest


def invalid_argument(exc: InvalidRequest) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))


def respond_each(requests, process) -> list:
    """`process(request)` for each request; an `InvalidRequest` answers only its own request."""
    responses = []
    for request in requests:
        try:
            responses.append(process(request))
        except InvalidRequest as exc:
            responses.append(invalid_argument(exc))
    return responses
