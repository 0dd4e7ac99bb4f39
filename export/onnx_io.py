"""Writing ONNX files: the dynamo exporter, external data for models over 2 GB, and fp16
conversion that keeps the numerically fragile ops in fp32."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

# Protobuf's hard limit is 2 GiB; stay well under it (vit_h's encoder is about 2.5 GB in fp32).
EXTERNAL_DATA_THRESHOLD = 1_500_000_000

# Kept in fp32 by `to_fp16`: the ViT's LayerNorms (and LayerNorm2d, exported as ReduceMean/Pow/
# Sqrt/Div) overflow in fp16 on the sum of squares; softmax and erf-GELU lose too much.
FP32_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Div", "Softmax", "Erf", "Range", "Less", "Where"]


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes,
) -> Path:
    """Export `module` with torch's dynamo exporter to `path` (and `path.data` when large)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.save(str(path), external_data=parameter_bytes(module) > EXTERNAL_DATA_THRESHOLD)
    return path


def to_fp16(path: Path) -> Path:
    """Convert an exported model in place to fp16 weights and compute, fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    large = sum(len(t.raw_data) for t in converted.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    onnx.save(converted, str(path), save_as_external_data=large, location=path.name + ".data")
    return path
