"""One `ModelDefinition` -> Triton's `ModelConfig` protobuf for the `cpu` or the `gpu` target.

Building the protobuf (rather than formatting text) means a config that Triton would reject as
malformed cannot be written at all.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from perceptserve.settings import DeploymentTarget, GpuOnnxRuntime, Settings

from .definitions import DynamicBatching, ModelDefinition, Runtime, Tensor

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
# An int8 copy for ONNX Runtime on the CPU (`--precision int8`); the `gpu` config keeps ONNX_FILE,
# since TensorRT does not import ONNX Runtime's integer ops and runs its fp16 path instead.
INT8_ONNX_FILE = "model.int8.onnx"


# The same model for ONNX Runtime on the CPU with its own fused operators (MultiHeadAttention:
# attention without the (tokens x tokens) matrix), a graph only: its weights are ONNX_FILE's
# external data file, so the repository holds them once. TensorRT reads ONNX_FILE.
CPU_ONNX_FILE = "model.cpu.onnx"


def cpu_onnx_file(folder: Path) -> Path:
    """The ONNX file a version folder's `cpu` config runs: the int8 copy where there is one, else
    the CPU-fused graph where there is one, else the exported model."""
    for name in (INT8_ONNX_FILE, CPU_ONNX_FILE):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return Path(folder) / ONNX_FILE


def _tensor(message, tensor: Tensor) -> None:
    message.name = tensor.name
    message.data_type = mc.DataType.Value(f"TYPE_{tensor.dtype}")
    message.dims.extend(tensor.dims)
    if tensor.optional:
        message.optional = True


def _tensorrt_accelerator(config: mc.ModelConfig, trt: GpuOnnxRuntime, model_name: str) -> None:
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
    accelerator.name = "tensorrt"
    for key, value in {
        "precision_mode": trt.precision_mode,
        "max_workspace_size_bytes": str(trt.max_workspace_size_bytes),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{trt.engine_cache_path}/{model_name}",
    }.items():
        accelerator.parameters[key] = value


def _warmup(config: mc.ModelConfig, definition: ModelDefinition) -> None:
    warmup = config.model_warmup.add()
    warmup.name = "zeros"
    warmup.batch_size = 1 if definition.max_batch_size > 0 else 0
    for tensor in definition.inputs:
        if tensor.optional:
            continue
        data = warmup.inputs[tensor.name]
        data.data_type = mc.DataType.Value(f"TYPE_{tensor.dtype}")
        data.dims.extend(1 if dim == -1 else dim for dim in tensor.dims)  # a variable dim: one (prompt, point)
        data.zero_data = True


def _set_ensemble(config: mc.ModelConfig, definition: ModelDefinition) -> None:
    config.platform = "ensemble"
    for step in definition.steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        message.input_map.update(step.inputs)
        message.output_map.update(step.outputs)


def _set_backend(
    config: mc.ModelConfig, definition: ModelDefinition, on_gpu: bool, settings: Settings, has_plan: bool, cpu_file: str
):
    """Python models, and ONNX models on the CPU target (run by `onnx_runner.py`), use the python
    backend; ONNX models on the GPU target a TensorRT plan where one was built, else ONNX Runtime
    with its TensorRT accelerator."""
    if not on_gpu:
        config.backend = "python"
    if definition.runtime is Runtime.ONNX and not on_gpu:
        config.parameters["onnx_file"].string_value = cpu_file
        config.parameters["intra_op_num_threads"].string_value = str(settings.cpu_onnxruntime.threads)
        config.parameters["allow_spinning"].string_value = str(int(settings.cpu_onnxruntime.allow_spinning))
        arena = settings.cpu_onnxruntime.memory_arena or definition.memory_arena
        config.parameters["memory_arena"].string_value = str(int(arena))
    if on_gpu and has_plan:
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
    elif on_gpu:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ONNX_FILE
        _tensorrt_accelerator(config, settings.gpu_onnxruntime, definition.name)


def _set_dynamic_batching(config: mc.ModelConfig, batching: DynamicBatching) -> None:
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size


def render(
    definition: ModelDefinition,
    target: DeploymentTarget | str,
    settings: Settings,
    *,
    has_plan: bool = False,
    cpu_file: str = ONNX_FILE,
) -> mc.ModelConfig:
    """The config of `definition` on `target` (cpu or gpu)."""
    config = mc.ModelConfig(name=definition.name, max_batch_size=definition.max_batch_size)
    for tensor in definition.inputs:
        _tensor(config.input.add(), tensor)
    for tensor in definition.outputs:
        _tensor(config.output.add(), tensor)
    for key, value in definition.parameters.items():
        config.parameters[key].string_value = value

    if definition.runtime is Runtime.ENSEMBLE:
        _set_ensemble(config, definition)
        return config

    on_gpu = DeploymentTarget(target) is DeploymentTarget.GPU and definition.runtime is Runtime.ONNX
    _set_backend(config, definition, on_gpu, settings, has_plan, cpu_file)
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    group.count = definition.instances.for_target(target) if definition.instances else 1
    if definition.dynamic_batching:
        _set_dynamic_batching(config, definition.dynamic_batching)
    if definition.response_cache:
        config.response_cache.enable = True
    if definition.warmup:
        _warmup(config, definition)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt as Triton would (tests use this on every written config)."""
    return text_format.Parse(text, mc.ModelConfig())
