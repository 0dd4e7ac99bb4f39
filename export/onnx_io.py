"""Writing ONNX files: the dynamo exporter, external data for models over 2 GB, fp16
conversion that keeps the numerically fragile ops in fp32, and int8 copies for the CPU."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx
import torch
from perceptserve.model_repository.configs import CPU_ONNX_FILE, INT8_ONNX_FILE, PLAN_FILE
from perceptserve.model_repository.definitions import Tensor

# Protobuf's hard limit is 2 GiB; stay well under it (vit_h's encoder is about 2.5 GB in fp32).
EXTERNAL_DATA_THRESHOLD = 1_500_000_000

# Kept in fp32 by `to_fp16`: the ViT's LayerNorms (and LayerNorm2d, exported as ReduceMean/Pow/
# Sqrt/Div) overflow in fp16 on the sum of squares; softmax and erf-GELU lose too much.
FP32_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Div", "Softmax", "Erf", "Range", "Less", "Where"]


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def dynamic_shapes(
    inputs: tuple[Tensor, ...], bounds: Mapping[str, torch.export.Dim] | None = None, batch=None
) -> dict[str, dict[int, object] | None]:
    """Each input's dynamic axes, read from its definition: `batch` at axis 0 for a model that
    batches (its dims leave the batch out), then its -1 dims, bounded by `bounds[name]` where
    `Tensor.axes` names them, `Dim.AUTO` otherwise."""
    shapes = {}
    offset = 0 if batch is None else 1
    for tensor in inputs:
        variable = [index for index, size in enumerate(tensor.dims) if size == -1]
        if tensor.axes and len(tensor.axes) != len(variable):
            raise ValueError(f"{tensor.name}: axes {tensor.axes} do not name its -1 dims {tensor.dims}")
        axes = {} if batch is None else {0: batch}
        for position, index in enumerate(variable):
            axes[offset + index] = (bounds or {})[tensor.axes[position]] if tensor.axes else torch.export.Dim.AUTO
        shapes[tensor.name] = axes or None
    return shapes


def check_example(example: Mapping[str, torch.Tensor], inputs: tuple[Tensor, ...], batched: bool = False) -> tuple:
    """The example's tensors in the definition's order, after checking that it names exactly the
    defined inputs and that their fixed dims agree; positional arguments for the export."""
    if list(example) != [tensor.name for tensor in inputs]:
        raise ValueError(f"example inputs {list(example)} are not the defined {[t.name for t in inputs]}")
    for tensor in inputs:
        shape = tuple(example[tensor.name].shape)[1 if batched else 0 :]
        if len(shape) != len(tensor.dims) or any(d not in (-1, s) for d, s in zip(tensor.dims, shape, strict=True)):
            raise ValueError(f"example {tensor.name} has shape {shape}, defined as {tensor.dims}")
    return tuple(example.values())


def export(
    module: torch.nn.Module,
    example: Mapping[str, torch.Tensor],
    path: Path,
    inputs: tuple[Tensor, ...],
    outputs: tuple[Tensor, ...],
    bounds: Mapping[str, torch.export.Dim] | None = None,
    batch=None,
    external_data: bool | None = None,
) -> Path:
    """Export `module` with torch's dynamo exporter to `path`, its weights in `path.data` when
    `external_data` (default: when over protobuf's limit).

    `example` is keyed by input name, as segment-anything's export keys its dummy inputs; the
    graph's input and output names and dynamic axes come from the definitions `inputs` and
    `outputs`, the same ones the model repository's configs are rendered from; `bounds` and
    `batch` as in `dynamic_shapes`."""
    args = check_example(example, inputs, batched=batch is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data"), path.with_name(CPU_ONNX_FILE)):
        stale.unlink(missing_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=[tensor.name for tensor in inputs],
            output_names=[tensor.name for tensor in outputs],
            dynamic_shapes=dynamic_shapes(inputs, bounds, batch),
            verbose=False,
        )
    if external_data is None:
        external_data = parameter_bytes(module) > EXTERNAL_DATA_THRESHOLD
    program.save(str(path), external_data=external_data)
    return path


def write_cpu_graph(path: Path) -> Path:
    """ONNX Runtime's fusions of the exported model at `path` (onnxscript's `optimize_for_ort`:
    scaled dot-product attention -> com.microsoft MultiHeadAttention, which on the CPU never holds
    the (tokens x tokens) matrix, 1 GiB per self-attention at SD's 64x64 latents; add + LayerNorm
    -> SkipLayerNormalization), written beside it as CPU_ONNX_FILE. Only the graph is written:
    its weights stay references into `path`'s external data file, which must exist, so the
    folder holds them once."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    if not path.with_name(path.name + ".data").exists():
        raise ValueError(f"{path} has no external data file to share with its CPU graph")
    model = ir.load(str(path))  # external tensors stay on disk, read only where a fusion needs them
    optimize_for_ort(model)
    target = path.with_name(CPU_ONNX_FILE)
    ir.save(model, str(target))
    return target


def to_fp16(path: Path) -> Path:
    """Convert an exported model in place to fp16 weights and compute, fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    # The converter appends its Casts after their consumers; ONNX requires topological order
    # (shape inference and stricter importers read the graph in one pass).
    OnnxModel(converted).topological_sort()
    data = path.with_name(path.name + ".data")
    # Weights stay external where they were (a CPU graph is written against them), else when large.
    external = data.exists() or sum(len(t.raw_data) for t in converted.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    # The data file is rewritten: a CPU graph pointing into the old one must go (export rewrites it).
    for stale in (data, path.with_name(CPU_ONNX_FILE)):
        stale.unlink(missing_ok=True)
    onnx.save(converted, str(path), save_as_external_data=external, location=data.name)
    return path


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantiser logs advice on the root logger for every tensor it skips (a uint8 image)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def nodes_in_scopes(model: onnx.ModelProto, scopes: Iterable[str]) -> list[str]:
    """Names of the nodes exported from inside any of the modules `scopes` (dotted paths such as
    `image_encoder.blocks.0`): torch's dynamo exporter records each node's module path in its
    metadata."""
    wanted = set(scopes)
    names = []
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes" and wanted & set(ast.literal_eval(prop.value)):
                names.append(node.name)
    return names


def quantize_int8(source: Path, target: Path, fp32_scopes: tuple[str, ...] = ()) -> Path:
    """An int8 copy of `source` for ONNX Runtime on the CPU: the MatMuls' weights int8 per
    tensor, their activations quantised at run time (dynamic quantisation: no calibration data,
    the same export for every checkpoint). Chosen by measurement on vit_b (benchmarks/README.md,
    issue 15): convolutions stay fp32 (ConvInteger cost mask IoU and they are under 1% of the
    FLOPs), and so do the nodes of the modules `fp32_scopes` (for a SAM ViT its first block,
    whose int8 error the later blocks amplify: worst IoU 0.970 -> 0.984 over 64 cases);
    per-channel weights and reduce_range did not help."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = nodes_in_scopes(onnx.load(str(source), load_external_data=False), fp32_scopes)
    external = source.with_name(source.name + ".data").exists()  # vit_h's fp32 weights
    with _quiet_root_logger():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            use_external_data_format=external,
        )
    return target


def apply_precision(
    paths: Iterable[Path], precision: str, quantized: Iterable[Path] = (), fp32_scopes: tuple[str, ...] = ()
) -> None:
    """The export's `--precision` on its ONNX files (each `<version>/model.onnx`), shared by the
    model families. fp16: converted in place. int8: each of `quantized` (the models where the
    compute is, an image encoder) gets an int8 copy that the `cpu` config runs (`fp32_scopes` as
    in `quantize_int8`); `model.onnx`
    stays fp32 for the `gpu` config's TensorRT fp16 path. Stale engines and int8 copies from an
    earlier export are removed: they must not outlive the model they came from."""
    paths, quantized = list(paths), list(quantized)
    for path in paths:
        for stale in (PLAN_FILE, INT8_ONNX_FILE, CPU_ONNX_FILE):
            (path.parent / stale).unlink(missing_ok=True)
    if precision == "fp16":
        for path in paths:
            to_fp16(path)
    elif precision == "int8":
        for path in quantized:
            quantize_int8(path, path.parent / INT8_ONNX_FILE, fp32_scopes)
