"""Every exported ONNX graph, op by op with its input and output types, against what TensorRT 10's
ONNX parser documents (export/data/onnx_tensorrt_operators.json), offline: users meet these
failures only when they build engines on their GPU.

The graphs are the session fixtures' exports (HQ-SAM's small ViT, DatasetDM's tiny pipeline) in
fp32, their fp16 conversions, and HQ-SAM's int8 encoder. The int8 encoder is ONNX Runtime's
(dynamic quantisation: DynamicQuantizeLinear, MatMulInteger, ConvInteger, none of which TensorRT
imports), so an int8 export's `gpu` config loads the fp32 graph, which TensorRT builds in fp16:
the int8 graph is listed and checked to be that and only that.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from perceptserve.export import onnx_io, tensorrt_readiness
from perceptserve.model_repository import configs
from perceptserve.model_repository.writer import VERSION

from perceptserve.hqsam.families import HQSAM

# ONNX Runtime's integer ops that dynamic quantisation writes; TensorRT takes int8 only as Q/DQ.
ORT_INTEGER_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def onnx_graphs(repository: Path) -> dict[str, Path]:
    return {path.parent.parent.name: path for path in sorted(Path(repository).glob(f"*/{VERSION}/{configs.ONNX_FILE}"))}


def fp16_copies(repository: Path, folder: Path) -> dict[str, Path]:
    copies = {}
    for model, path in onnx_graphs(repository).items():
        copy = folder / model / path.name
        copy.parent.mkdir(parents=True)
        for source in (path, path.with_name(path.name + ".data")):  # the graph and its external weights, if any
            if source.exists():
                shutil.copyfile(source, copy.with_name(source.name))
        copies[model] = onnx_io.to_fp16(copy)
    return copies


@pytest.fixture(scope="module")
def graphs(small_vit, tiny_export, tmp_path_factory) -> dict[str, Path]:
    """'family/precision/model' -> the ONNX file."""
    found = {}
    for family, repository in (("hqsam", small_vit.repository), ("datasetdm", tiny_export.repository)):
        found |= {f"{family}/fp32/{m}": p for m, p in onnx_graphs(repository).items()}
        fp16 = fp16_copies(repository, tmp_path_factory.mktemp(f"{family}_fp16"))
        found |= {f"{family}/fp16/{m}": p for m, p in fp16.items()}
    return found


def test_the_operator_table_is_tensorrt_10_with_its_source():
    table = tensorrt_readiness.operator_table()
    assert table["tensorrt_version"].startswith("10.")
    assert table["source"].startswith("https://github.com/onnx/onnx-tensorrt/")
    assert len(table["operators"]) > 150
    assert table["operators"]["DynamicQuantizeLinear"]["supported"] is False
    assert table["operators"]["ScatterND"]["attribute_values"] == {"reduction": ["none"]}


def test_every_exported_graph_uses_only_what_tensorrt_parses(graphs):
    assert {key.split("/")[0] for key in graphs} == {"hqsam", "datasetdm"}
    assert len(graphs) >= 2 * 2 * 2
    failures, listing = [], []
    for key, path in graphs.items():
        model = tensorrt_readiness.load(path)
        listing += [f"{key}: {line}" for line in tensorrt_readiness.summary(tensorrt_readiness.inventory(model))]
        failures += [f"{key}: {problem}" for problem in tensorrt_readiness.problems(model)]
    print("\n".join(listing))  # the inventory, for `pytest -s`
    assert not failures, "\n".join(failures)


def test_int8_graphs_stay_on_the_cpu_and_tensorrt_gets_the_checked_fp32_graph(small_vit_int8):
    encoder = small_vit_int8.repository / HQSAM.encoder
    int8 = tensorrt_readiness.load(encoder / VERSION / configs.INT8_ONNX_FILE)
    print(
        "\n".join(
            f"hqsam/int8/{HQSAM.encoder}: {line}"
            for line in tensorrt_readiness.summary(tensorrt_readiness.inventory(int8))
        )
    )
    rejected = {p.split(" ")[0] for p in tensorrt_readiness.problems(int8)}
    assert rejected and rejected <= ORT_INTEGER_OPS, rejected
    cpu = configs.parse((encoder / "configs" / "cpu.pbtxt").read_text())
    gpu = configs.parse((encoder / "configs" / "gpu.pbtxt").read_text())
    assert cpu.parameters["onnx_file"].string_value == configs.INT8_ONNX_FILE
    assert gpu.default_model_filename == configs.ONNX_FILE
    assert gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"
    assert not tensorrt_readiness.problems(tensorrt_readiness.load(encoder / VERSION / configs.ONNX_FILE))


def test_the_check_names_the_op_and_the_model(small_vit_int8):
    """A graph with an op TensorRT lacks fails, naming both."""
    path = small_vit_int8.repository / HQSAM.encoder / VERSION / configs.INT8_ONNX_FILE
    found = tensorrt_readiness.problems(tensorrt_readiness.load(path))
    assert any(p.startswith("DynamicQuantizeLinear node") and "not supported by TensorRT" in p for p in found), found
