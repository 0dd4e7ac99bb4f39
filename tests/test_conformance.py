"""Conformance: the clients Triton users already have, on every served model, with the real
server. tritonclient gRPC (sync, asyncio, `stream_infer` on a bidirectional stream), tritonclient
HTTP (binary and JSON), system shared memory for inputs and outputs, any subset of the outputs,
the metadata and config endpoints against the README's API tables, `request_id` echoed back, and
the README's curl example run with the real `curl`.

One server per model family for the whole file: the session servers of conftest.py. CUDA shared
memory is not tested: it needs a GPU and a CUDA build of the client (README, "Clients").
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as system_shm
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.clients.segment import parse_prompt, segment_file
from PIL import Image
from skimage import data as sample_images
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from perceptserve.imaging import encode_png

from .conftest import repo_root
from .test_imaging import UPRIGHT, jpeg_with_orientation, stored_pixels

pytestmark = pytest.mark.server

PHOTO = np.ascontiguousarray(sample_images.coffee()[::4, ::4])  # 100 x 150
PHOTO_PNG = encode_png(PHOTO)


def strings(*values: bytes) -> np.ndarray:
    return np.array(values, dtype=np.object_)


# Each served model with one valid request; the fixture named second serves it.
REQUESTS = {
    "hqsam": (
        "server",
        {
            "image": strings(PHOTO_PNG),
            "point_coords": np.array([[[70.0, 40.0]], [[20.0, 80.0]]], np.float32),
            "point_labels": np.array([[1], [1]], np.int32),
        },
    ),
    "hqsam_automatic": (
        "server",
        {
            "image": strings(PHOTO_PNG),
            "points_per_side": np.array([2], np.int32),
            "pred_iou_thresh": np.array([0.0], np.float32),  # random weights: keep every mask
            "stability_score_thresh": np.array([0.0], np.float32),
        },
    ),
    "datasetdm_annotate": (
        "datasetdm_server",
        {"image": strings(PHOTO_PNG), "prompt": strings(b"a cat on a sofa"), "class_names": strings(b"cat", b"sofa")},
    ),
    "datasetdm_generate": (
        "datasetdm_server",
        {
            "prompt": strings(b"a cat on a sofa"),
            "class_names": strings(b"cat", b"sofa"),
            "seeds": np.array([3], np.int64),
            "steps": np.array([2], np.int32),
            "height": np.array([64], np.int32),
            "width": np.array([64], np.int32),
        },
    ),
}


def served(request, model: str):
    fixture, arrays = REQUESTS[model]
    return request.getfixturevalue(fixture), arrays


def infer_inputs(module, arrays: dict[str, np.ndarray], binary: bool = True) -> list:
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def http_address(server) -> str:
    return server.http_url.removeprefix("http://")


TIMINGS = ("stage_seconds",)  # hqsam_automatic's own timing of the request: never equal twice


def assert_same(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, name
    if name.endswith(TIMINGS):
        return
    if np.issubdtype(expected.dtype, np.floating):
        scale = np.abs(expected).max() if expected.size else 0.0  # random decoders may find no instance
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    else:
        np.testing.assert_array_equal(got, expected, err_msg=name)


_FULL: dict[str, dict[str, np.ndarray]] = {}


def full_response(server, model: str, arrays) -> dict[str, np.ndarray]:
    """Every output, over gRPC with no outputs named (once per model)."""
    if model not in _FULL:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            outputs = [o.name for o in client.get_model_metadata(model).outputs]
            result = client.infer(model, infer_inputs(grpcclient, arrays))
        _FULL[model] = {name: result.as_numpy(name) for name in outputs}
    return _FULL[model]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", list(REQUESTS))
def test_every_single_output_and_neighbouring_pair_matches_the_full_response(request, model, protocol):
    server, arrays = served(request, model)
    full = full_response(server, model, arrays)
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else http_address(server)
    # Each output alone, and each beside the next one: every output is asked for with another, in 2n - 1
    # requests instead of all n(n + 1) / 2 (DatasetDM annotate's outputs made that test CI's slowest).
    names = list(full)
    subsets = [(name,) for name in names] + list(pairwise(names))
    with module.InferenceServerClient(url) as client:
        for subset in subsets:
            result = client.infer(
                model, infer_inputs(module, arrays), outputs=[module.InferRequestedOutput(n) for n in subset]
            )
            for name in full:
                if name in subset:
                    assert_same(result.as_numpy(name), full[name], f"{model} {subset} {name}")
                else:
                    assert result.as_numpy(name) is None, f"{model} {subset}: {name} was not asked for"


@pytest.mark.parametrize("model", ["hqsam", "datasetdm_annotate"])
def test_http_json_only_with_a_base64_image(request, model):
    """What curl, browsers and KServe v2 clients without the binary extension send: JSON strings."""
    server, arrays = served(request, model)
    full = full_response(server, model, arrays)
    as_text = dict(arrays, image=strings(b"data:image/png;base64," + base64.b64encode(PHOTO_PNG)))
    with httpclient.InferenceServerClient(http_address(server)) as client:
        result = client.infer(
            model,
            infer_inputs(httpclient, as_text, binary=False),
            outputs=[httpclient.InferRequestedOutput(name, binary_data=False) for name in full],
            request_id="json-1",
        )
    assert result.get_response()["id"] == "json-1"
    assert not result.get_response().get("parameters", {}).get("binary_data_size")
    for name, expected in full.items():
        assert_same(result.as_numpy(name), expected, name)


def test_grpc_request_id_is_echoed(server):
    _, arrays = REQUESTS["hqsam"]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("hqsam", infer_inputs(grpcclient, arrays), request_id="grpc-7")
    assert result.get_response().id == "grpc-7"


def test_asyncio_and_bidirectional_stream(server):
    _, arrays = REQUESTS["hqsam"]
    full = full_response(server, "hqsam", arrays)

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as client:
            single = await client.infer("hqsam", infer_inputs(aioclient, arrays), request_id="aio")

            async def requests():
                for index in range(3):
                    yield {"model_name": "hqsam", "inputs": infer_inputs(aioclient, arrays), "request_id": f"s{index}"}

            streamed = [item async for item in client.stream_infer(requests())]
        return single, streamed

    single, streamed = asyncio.run(run())
    assert single.get_response().id == "aio"
    assert [error for _, error in streamed] == [None] * 3
    assert sorted(result.get_response().id for result, _ in streamed) == ["s0", "s1", "s2"]
    for result in [single] + [result for result, _ in streamed]:
        for name, expected in full.items():
            assert_same(result.as_numpy(name), expected, name)


def _in_shared_memory(client, handles, name: str, arrays: list[np.ndarray]) -> int:
    size = sum(len(a.item()) if a.dtype == np.object_ else a.nbytes for a in arrays)
    handle = system_shm.create_shared_memory_region(name, f"/perceptserve_{name}", size)
    handles.append(handle)
    system_shm.set_shared_memory_region(handle, arrays)
    client.register_system_shared_memory(name, f"/perceptserve_{name}", size)
    return size


def _unregister_once_released(client, timeout_s: float = 10.0) -> None:
    """Triton refuses to unregister a region a request still holds ("Failed to unregister ...").
    It releases the ensemble's requests just after the client has its response, so an unregister
    sent at once can fail (it did once in 430 runs): retry until the server lets go."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.unregister_system_shared_memory()
            return
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_for_inputs_and_outputs(server, protocol):
    _, arrays = REQUESTS["hqsam"]
    full = full_response(server, "hqsam", arrays)
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else http_address(server)
    wire = {name: serialize_byte_tensor(a) if a.dtype == np.object_ else a for name, a in arrays.items()}
    handles = []
    with module.InferenceServerClient(url) as client:
        try:
            _in_shared_memory(client, handles, f"in_{protocol}", list(wire.values()))
            out_size = _in_shared_memory(client, handles, f"out_{protocol}", [np.zeros_like(a) for a in full.values()])
            inputs, offset = [], 0
            for name, array in arrays.items():
                tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                size = len(wire[name].item()) if array.dtype == np.object_ else array.nbytes
                tensor.set_shared_memory(f"in_{protocol}", size, offset)
                inputs.append(tensor)
                offset += size
            outputs, offset = [], 0
            for name, expected in full.items():
                output = module.InferRequestedOutput(name)
                output.set_shared_memory(f"out_{protocol}", expected.nbytes, offset)
                outputs.append(output)
                offset += expected.nbytes
            assert offset == out_size
            client.infer("hqsam", inputs, outputs=outputs)  # the outputs land in shared memory
            offset = 0
            for name, expected in full.items():
                got = system_shm.get_contents_as_numpy(handles[1], expected.dtype, expected.shape, offset)
                assert_same(got, expected, name)
                offset += expected.nbytes
        finally:
            _unregister_once_released(client)
            for handle in handles:
                system_shm.destroy_shared_memory_region(handle)


# ---- the metadata and config endpoints against the documented API tables ----


def _dims(text: str) -> list[int | None]:
    """`[N, 1, 256, 256]` -> [None, 1, 256, 256]: letters are sizes the caller chooses."""
    return [int(d) if d.strip().isdigit() else None for d in text.strip("[]` ").split(",")]


TABLE_ROW = re.compile(r"^\| (`[^|]+`) \| (\w+) \| `?(\[[^\]]*\])`?[^|]*\|(.*)$", re.M)  # names, type, shape, rest


def documented_tensors(document: Path, heading: str) -> dict[str, tuple[str, list, bool]]:
    """name -> (type, dims, optional) from the tables (and an `Outputs:` line) of a section."""
    text = document.read_text()
    start = text.index(heading)
    section = text[start : text.find("\n#", start + len(heading))]
    optional_rule = "(all but `image` optional" in section  # the hqsam table's rule
    tensors = {}
    for names, dtype, shape, rest in TABLE_ROW.findall(section):
        for name in re.findall(r"`(\w+)`", names):
            tensors[name] = (dtype, _dims(shape), "optional" in rest or (optional_rule and name != "image"))
    outputs = re.search(r"^Outputs: (.*?)(?:\n\n|\Z)", section, re.M | re.S)
    for name, dtype, shape in re.findall(r"`(\w+)` (\w+)\s+(\[[^\]]*\])", outputs.group(1) if outputs else ""):
        tensors[name] = (dtype, _dims(shape), False)
    return tensors


API_TABLES = {"hqsam": ("README.md", "## The `hqsam` and `sam` API")}


def _agrees(documented: list, served: list[int]) -> bool:
    return len(documented) == len(served) and all(
        d is None or s in (-1, d) for d, s in zip(documented, served, strict=True)
    )


@pytest.mark.parametrize("model", list(API_TABLES))
def test_metadata_and_config_agree_with_the_documented_api(request, model):
    server, _ = served(request, model)
    document, heading = API_TABLES[model]
    documented = documented_tensors(repo_root() / document, heading)
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
        grpc_metadata = grpc_client.get_model_metadata(model, as_json=True)
        grpc_config = grpc_client.get_model_config(model, as_json=True)["config"]
    with httpclient.InferenceServerClient(http_address(server)) as http_client:
        http_metadata = http_client.get_model_metadata(model)
        http_config = http_client.get_model_config(model)
    for metadata in (grpc_metadata, http_metadata):
        served_tensors = {t["name"]: t for t in metadata["inputs"] + metadata["outputs"]}
        assert set(served_tensors) == set(documented), model
        for name, (dtype, dims, _) in documented.items():
            tensor = served_tensors[name]
            assert tensor["datatype"] == dtype, (model, name)
            assert _agrees(dims, [int(d) for d in tensor["shape"]]), (model, name, dims, tensor["shape"])
    for config in (grpc_config, http_config):
        inputs = {t["name"]: t.get("optional", False) for t in config["input"]}
        assert inputs == {name: opt for name, (_, _, opt) in documented.items() if name in inputs}, model


# ---- phone photos upright, and the README's curl example ----


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_a_rotated_phone_photo_gets_an_upright_mask(server, tmp_path, orientation):
    """The JPEG as the camera stored it, orientation tag set; the point is where the user sees it.
    The served mask is the one for the upright pixels sent as a PNG, at the upright size, and
    the client's overlay is upright too."""
    jpeg = jpeg_with_orientation(np.ascontiguousarray(np.rot90(PHOTO)), orientation)
    upright = np.ascontiguousarray(UPRIGHT[orientation](stored_pixels(jpeg)))
    height, width = upright.shape[:2]
    point = dict(point_coords=[[width * 0.6, height * 0.3]], point_labels=[1])
    with HQSamClient(server.grpc_url) as client:
        from_jpeg = client.segment(jpeg, **point).masks
        from_upright = client.segment(encode_png(upright), **point).masks
        (tmp_path / "phone.jpg").write_bytes(jpeg)
        prompt = parse_prompt([f"{width * 0.6},{height * 0.3}"], None)
        files = tmp_path / "phone.jpg", tmp_path / "m.png", tmp_path / "o.png"
        mask = segment_file(client, files[0], prompt, False, False, files[1], files[2])
    assert from_jpeg.shape == (1, 1, height, width)
    np.testing.assert_array_equal(from_jpeg, from_upright)
    np.testing.assert_array_equal(mask, from_jpeg[0, 0])
    assert Image.open(tmp_path / "o.png").size == (width, height)


def test_a_rotated_phone_photo_is_annotated_upright(datasetdm_server):
    jpeg = jpeg_with_orientation(np.ascontiguousarray(np.rot90(PHOTO)), 6)
    _, arrays = REQUESTS["datasetdm_annotate"]
    with grpcclient.InferenceServerClient(datasetdm_server.grpc_url) as client:
        result = client.infer("datasetdm_annotate", infer_inputs(grpcclient, dict(arrays, image=strings(jpeg))))
    assert result.as_numpy("class_map").shape == (1, *PHOTO.shape[:2])


def readme_curl_example() -> str:
    readme = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return next(block for block in blocks if "curl " in block and "/infer" in block)


def test_the_readme_curl_example_segments_a_photo(server, tmp_path):
    """The README's block as it is, with the real curl binary; only its first line (photo and
    address) is replaced."""
    script = readme_curl_example()
    first, rest = script.split("\n", 1)
    assert first.startswith("PHOTO=") and "URL=" in first
    photo = tmp_path / "photo.jpg"
    picture = sample_images.coffee()  # 600 x 400: the README's point (300, 200) is on the cup
    Image.fromarray(picture).save(photo, quality=95)
    script = f"PHOTO={photo} URL={server.http_url}\n{rest}"
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True, timeout=120)
    response = json.loads((tmp_path / "result.json").read_text())
    outputs = {o["name"]: o for o in response["outputs"]}
    masks = outputs["masks"]
    assert masks["datatype"] == "BOOL" and masks["shape"] == [1, 1, *picture.shape[:2]]
    with HQSamClient(server.grpc_url) as client:
        expected = client.segment(photo.read_bytes(), point_coords=[[300.0, 200.0]], point_labels=[1])
    np.testing.assert_array_equal(np.array(masks["data"], bool).reshape(masks["shape"]), expected.masks)
    np.testing.assert_allclose(outputs["iou_predictions"]["data"], expected.scores.reshape(-1), rtol=1e-5)
