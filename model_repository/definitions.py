"""Typed model definitions, in the spirit of PyTriton's configs: what a model takes and returns
and how it runs, independent of the device. `configs.render` turns one into Triton's
`ModelConfig` for the `cpu` or the `gpu` target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from perceptserve.settings import InstanceCounts


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's name without TYPE_: FP32, FP16, INT32, INT64, UINT8, BOOL, STRING
    dims: tuple[int, ...]  # without the batch dimension when the model batches
    optional: bool = False


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    max_queue_size: int


class Runtime(Enum):
    """How a model runs. ONNX models run in ONNX Runtime: on the CPU target through the python
    backend (the only backend the embedded tritonserver has), on the GPU target through the
    onnxruntime backend with TensorRT, or as a TensorRT plan where an engine was built."""

    PYTHON = "python"
    ONNX = "onnx"
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    inputs: dict[str, str]  # the step model's input name -> ensemble tensor
    outputs: dict[str, str]  # the step model's output name -> ensemble tensor


@dataclass(frozen=True)
class ModelDefinition:
    name: str
    runtime: Runtime
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = 0
    instances: InstanceCounts | None = None
    python_source: str | None = None  # file in python_models/, for Runtime.PYTHON
    dynamic_batching: DynamicBatching | None = None
    response_cache: bool = False
    warmup: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    steps: tuple[EnsembleStep, ...] = ()
