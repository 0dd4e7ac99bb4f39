"""What every python-backend model reads: its config's parameters once in `initialize`, and its
requests' inputs in `execute` (required, optional, or a single value with a default).

One module so that a new python model needs no copy of these readers, and a request that holds
the wrong number of values is refused the same way (INVALID_ARGUMENT naming the input) everywhere.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from perceptserve.errors import InvalidRequest

_REQUIRED = object()


def model_config(args: dict) -> dict:
    """The model's config, as Triton hands it to `initialize` (JSON)."""
    return json.loads(args["model_config"])


def parameters(config: dict) -> dict[str, str]:
    """The config's `parameters`, name -> string value (rendered from the model's definition)."""
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def required(request, name: str) -> np.ndarray:
    """An input the config declares required (Triton refuses a request without it)."""
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def optional(request, name: str) -> np.ndarray | None:
    """An optional input, None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def one(request, name: str, default=_REQUIRED, *, kind: str = "value"):
    """The single value of input `name` (`default` when the request left it out); `InvalidRequest`
    (INVALID_ARGUMENT) when it holds more or fewer."""
    value = optional(request, name)
    if value is None:
        if default is _REQUIRED:
            raise InvalidRequest(f"{name} is missing")
        return default
    if value.size != 1:
        raise InvalidRequest(f"{name} must hold one {kind}, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def pass_through_names(config: dict) -> tuple[str, ...]:
    """The outputs that are also inputs of the model (same name): an ensemble's last step hands
    them on unchanged, because every output of an ensemble comes from its last step
    (`definitions.check_outputs_come_from_the_last_step`)."""
    names = {tensor["name"] for tensor in config["input"]}
    return tuple(tensor["name"] for tensor in config["output"] if tensor["name"] in names)


def passed_through(request, names) -> dict[str, np.ndarray]:
    """The request's inputs `names`, by name, to answer as outputs of the same names."""
    return {name: required(request, name) for name in names}
