"""Running tritonserver: where it is (`installation`), its flags (`flags`), one process
(`launcher`), and `perceptserve serve`'s supervision (`supervisor`, watching `stubs` and
draining by `metrics`). `failure` turns a failed start into one line; `ports` finds free ones."""

from .failure import ServerError
from .launcher import TritonServer
from .ports import free_port

__all__ = ["ServerError", "TritonServer", "free_port"]
