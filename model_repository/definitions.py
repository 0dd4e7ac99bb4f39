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
    """One input or output, defined once: the model repository's config and the ONNX export's
    input names, example shapes and dynamic axes (`export.onnx_io`) are all read from it.

    Args:
        name: the tensor's name in Triton and in the ONNX graph (the exported module's argument name).
        dtype: Triton's name without TYPE_: FP32, FP16, INT32, INT64, UINT8, BOOL, STRING.
        dims: without the batch dimension when the model batches; -1 where the size varies.
        optional: a request may leave the input out.
        axes: names of the -1 dims, in order, where the export gives them bounds (HQ-SAM's
            prompt sets and points); unnamed -1 dims are exported as automatic dynamic dims.
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    axes: tuple[str, ...] = ()


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
    """One model of the repository. An ensemble's definition must follow the rule that makes any
    subset of its outputs work (`check_outputs_come_from_the_last_step`); it is checked here, so a
    definition that breaks it cannot be written."""

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
    # ONNX Runtime's CPU arena for this model (`cpu` target): it keeps the largest run's
    # activations for the session's life. Only for a model whose runs are small and many (the
    # HQ-SAM decoder, one run per prompt batch); every other model gives them back after each run.
    memory_arena: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    steps: tuple[EnsembleStep, ...] = ()

    def __post_init__(self) -> None:
        if self.runtime is Runtime.ENSEMBLE:
            check_outputs_come_from_the_last_step(self)


def check_outputs_come_from_the_last_step(ensemble: ModelDefinition) -> None:
    """Every output of an ensemble comes from its last step, and no step reads one.

    Why: when a client asks for some of an ensemble's outputs, Triton (2.51, and its core to
    this day) prunes the steps that only produce unrequested ones, walking back from them
    (`EnsembleContext`'s "Backward traversal"): each unrequested output decrements its
    producing step's count of wanted outputs, and a step at zero is dropped along with its
    inputs. An output that a later step also reads (HQ-SAM's `low_res_logits`, read by the
    postprocess step) is then counted twice, or dropped while requested, and the step that
    makes it is pruned: "unexpected deadlock, at least one output is not set". With every
    output from one last step, that step always keeps a requested output and nothing is
    pruned, whatever subset is asked for. A last step that is a python model hands on the
    tensors it only passes through (`inputs.passed_through`).
    """
    outputs = {tensor.name for tensor in ensemble.outputs}
    last = ensemble.steps[-1]
    elsewhere = sorted(outputs - set(last.outputs.values()))
    read = sorted(outputs & {tensor for step in ensemble.steps for tensor in step.inputs.values()})
    if elsewhere or read:
        raise ValueError(
            f"ensemble {ensemble.name}: every output must come from its last step ({last.model}) and feed no "
            f"other step, or a request for a subset of them deadlocks in Triton; not from the last step: "
            f"{elsewhere or 'none'}, read by a step: {read or 'none'}"
        )
