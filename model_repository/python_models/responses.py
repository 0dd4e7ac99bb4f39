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


def pass_through_names(model_config: dict) -> tuple[str, ...]:
    """The outputs that are also inputs of the model (same name): an ensemble's last step hands
    them on unchanged, because every output of an ensemble comes from its last step
    (`definitions.check_outputs_come_from_the_last_step`)."""
    inputs = {tensor["name"] for tensor in model_config["input"]}
    return tuple(tensor["name"] for tensor in model_config["output"] if tensor["name"] in inputs)


def passed_through(request, names) -> list:
    """The request's inputs `names` as output tensors of the same names."""
    return [pb_utils.Tensor(name, pb_utils.get_input_tensor_by_name(request, name).as_numpy()) for name in names]
