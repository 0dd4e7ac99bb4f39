"""Running the requests of one dynamic batch as one batch: the inputs joined along the batch
dimension, the outputs split back per request. Shared by `onnx_runner.py` (one ONNX Runtime run)
and `guard.py` (one BLS request to the guarded model)."""

import numpy as np


def join(feeds: list[dict[str, np.ndarray]], names) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The requests' inputs `names` concatenated, and the bounds of each request's rows."""
    bounds = np.cumsum([0] + [len(feed[names[0]]) for feed in feeds])
    if len(feeds) == 1:  # the common case, and the guarded model's: its one request is the guard's whole batch
        return {name: np.ascontiguousarray(feeds[0][name]) for name in names}, bounds
    return {name: np.ascontiguousarray(np.concatenate([feed[name] for feed in feeds])) for name in names}, bounds


def split(outputs: list[np.ndarray], bounds: np.ndarray) -> list[list[np.ndarray]]:
    """Each request's rows of every output, in the requests' order."""
    return [[output[start:end] for output in outputs] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
