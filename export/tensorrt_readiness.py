"""Offline check of an ONNX graph against what TensorRT's ONNX parser documents it imports.

There is no GPU (and no TensorRT) where this project is built, and users meet TensorRT failures
only at engine build time on their GPU. So every exported graph is listed here op by op, with
the data types each op's inputs and outputs carry, and checked against onnx-tensorrt's operator
table (`data/onnx_tensorrt_operators.json`: the TensorRT version, the source and the machine-
checkable reading of its restrictions are recorded in that file).

Which types an op's table row restricts: the tensors bound to the op's primary ONNX type
parameter (the first input's, among those allowing more than one type), which is what the
table's "Supported Types" column describes (`Resize`'s `sizes` is int64 by ONNX's definition,
not a choice of the exporter); `Cast` also has its output checked, since casting to a type
TensorRT lacks is the usual way such a type enters a graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

TABLE = "onnx_tensorrt_operators.json"
CAST_OPS = ("Cast", "CastLike")
# onnx TensorProto element types in the table's spelling.
TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.STRING: "STRING",
}


@cache
def operator_table() -> dict:
    return json.loads((resources.files("perceptserve.export") / "data" / TABLE).read_text())


@dataclass(frozen=True)
class OpUse:
    """One node: its op, the types of its inputs and outputs ("" for an omitted optional input,
    "?" where shape inference could not tell), and which of them the table restricts."""

    op: str
    domain: str
    node: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    checked_inputs: tuple[int, ...]
    checked_outputs: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.op}({', '.join(self.inputs)}) -> ({', '.join(self.outputs)})"


def _schema(op: str, domain: str, opset: int):
    try:
        return onnx.defs.get_schema(op, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params: list, index: int):
    """The formal parameter an actual input/output at `index` binds to (variadic: the last)."""
    if not params:
        return None
    return params[min(index, len(params) - 1)]


def _checked_positions(node: onnx.NodeProto, opset: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    schema = _schema(node.op_type, node.domain, opset)
    if schema is None:
        return tuple(range(len(node.input))), tuple(range(len(node.output)))
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    primary = next(
        (p.type_str for p in schema.inputs if len(allowed.get(p.type_str, ())) > 1),
        None,
    )
    bound = lambda params, i: (formal := _formal(params, i)) is not None and formal.type_str == primary  # noqa: E731
    inputs = tuple(i for i in range(len(node.input)) if bound(schema.inputs, i))
    outputs = tuple(i for i in range(len(node.output)) if bound(schema.outputs, i) or node.op_type in CAST_OPS)
    return inputs, outputs


def _types(model: onnx.ModelProto) -> dict[str, str]:
    """Every value's element type, from the graph's declarations after shape inference."""
    types: dict[str, str] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type"):
                types[value.name] = TYPE_NAMES.get(value.type.tensor_type.elem_type, "?")
        for tensor in graph.initializer:
            types[tensor.name] = TYPE_NAMES.get(tensor.data_type, "?")
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    types[node.output[0]] = TYPE_NAMES.get(attribute.t.data_type, "?")
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(model.graph)
    return types


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)


def load(path: Path) -> onnx.ModelProto:
    """The graph with inferred value types; weights stay on disk (only their types are needed)."""
    model = onnx.load(str(path), load_external_data=False)
    del model.graph.value_info[:]  # fp16 conversion leaves stale declarations; infer them afresh
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def inventory(model: onnx.ModelProto) -> list[OpUse]:
    types, version = _types(model), opset(model)
    uses = []
    for node in _nodes(model.graph):
        checked_in, checked_out = _checked_positions(node, version)
        uses.append(
            OpUse(
                op=node.op_type,
                domain=node.domain or "ai.onnx",
                node=node.name,
                inputs=tuple(types.get(name, "?") if name else "" for name in node.input),
                outputs=tuple(types.get(name, "?") for name in node.output),
                checked_inputs=checked_in,
                checked_outputs=checked_out,
            )
        )
    return uses


def summary(uses: list[OpUse]) -> list[str]:
    """One line per distinct (op, input types, output types), with how many nodes have it."""
    counts: dict[str, int] = {}
    for use in uses:
        counts[use.describe()] = counts.get(use.describe(), 0) + 1
    return [f"{line}  x{n}" for line, n in sorted(counts.items())]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: t for t in model.graph.initializer}
    for node in _nodes(model.graph):
        if node.op_type == "Constant":
            values[node.output[0]] = next(a.t for a in node.attribute if a.name == "value")
    return {
        name: numpy_helper.to_array(t) for name, t in values.items() if t.data_location != onnx.TensorProto.EXTERNAL
    }


def _input_position(op: str, domain: str, version: int, name: str) -> int | None:
    schema = _schema(op, domain, version)
    names = [p.name for p in schema.inputs] if schema else []
    return names.index(name) if name in names else None


def _restriction_problems(node: onnx.NodeProto, row: dict, constants: dict, version: int) -> list[str]:
    problems = []
    for name in row.get("constant_inputs", ()):
        position = _input_position(node.op_type, node.domain, version, name)
        if position is not None and position < len(node.input) and node.input[position]:
            if node.input[position] not in constants:
                problems.append(f"input `{name}` must be a constant (initializer)")
    for name in row.get("zero_inputs", ()):
        position = _input_position(node.op_type, node.domain, version, name)
        if position is not None and position < len(node.input) and node.input[position]:
            value = constants.get(node.input[position])
            if value is None or np.any(value != 0):
                problems.append(f"input `{name}` must be zero")
    for attribute in node.attribute:
        allowed = row.get("attribute_values", {}).get(attribute.name)
        if allowed is not None:
            value = onnx.helper.get_attribute_value(attribute)
            value = value.decode() if isinstance(value, bytes) else value
            if value not in allowed:
                problems.append(f"attribute {attribute.name}={value!r} (supported: {allowed})")
    if "max_outputs" in row and sum(1 for o in node.output if o) > row["max_outputs"]:
        problems.append(f"only the first {row['max_outputs']} output(s) supported")
    return problems


def problems(model: onnx.ModelProto) -> list[str]:
    """What TensorRT's ONNX parser documents it would reject in `model`; empty when ready."""
    table = operator_table()
    low, high = table["opset_range"]
    version = opset(model)
    found = [] if low <= version <= high else [f"opset {version} outside TensorRT's {low}..{high}"]
    io = {v.name for v in (*model.graph.input, *model.graph.output)}
    types, constants = _types(model), _constants(model)
    for node, use in zip(_nodes(model.graph), inventory(model), strict=True):
        where = f"{use.op} node {use.node!r}: {use.describe()}"
        row = table["operators"].get(use.op) if use.domain == "ai.onnx" else None
        if row is None or not row["supported"]:
            found.append(f"{where}: {use.domain} op {use.op} is not supported by TensorRT's ONNX parser")
            continue
        for kind, positions, values in (
            ("input", use.checked_inputs, use.inputs),
            ("output", use.checked_outputs, use.outputs),
        ):
            for i in positions:
                if values[i] and values[i] not in row["types"]:
                    found.append(f"{where}: {kind} {i} is {values[i]}, supported: {', '.join(row['types'])}")
        found += [f"{where}: {p}" for p in _restriction_problems(node, row, constants, version)]
        uint8_inside = [n for n in (*node.input, *node.output) if n and types.get(n) == "UINT8" and n not in io]
        if uint8_inside:
            found.append(f"{where}: UINT8 tensor {uint8_inside[0]!r} inside the network (only network I/O)")
    return found
