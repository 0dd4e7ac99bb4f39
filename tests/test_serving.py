"""HQ-SAM served by the real tritonserver over real gRPC, against the official SamPredictor."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from perceptserve.clients import AsyncHQSamClient, ClientError, HQSamClient
from perceptserve.clients.triton_io import infer_input
from perceptserve.export.hqsam_parity import mask_iou
from perceptserve.server.installation import HUGE_PAGES_TUNABLE
from perceptserve.server.stubs import stub_processes
from tritonclient.utils import InferenceServerException

from perceptserve.hqsam.official import SamPredictor
from perceptserve.imaging import encode_png

from .conftest import official_batched

pytestmark = pytest.mark.server

PROMPTS = {
    "point": dict(point_coords=np.array([[220.0, 180.0]]), point_labels=np.array([1])),
    "points with a negative": dict(
        point_coords=np.array([[220.0, 180.0], [60.0, 300.0]]), point_labels=np.array([1, 0])
    ),
    "box": dict(box=np.array([80.0, 40.0, 380.0, 390.0])),
    "box and point": dict(
        box=np.array([80.0, 40.0, 380.0, 390.0]), point_coords=np.array([[220.0, 180.0]]), point_labels=np.array([1])
    ),
}


def close(ours, reference, relative=1e-3):
    return np.abs(ours - reference).max() <= relative * max(np.abs(reference).max(), 1e-6)


@pytest.fixture(scope="module")
def client(server):
    with HQSamClient(server.grpc_url) as connected:
        yield connected


def stats(server, model):
    """(inference count, execution count, cache hits). Triton records a request's statistics just
    after answering it, so read until two reads 50 ms apart agree."""

    def read():
        with grpcclient.InferenceServerClient(server.grpc_url) as raw:
            s = raw.get_inference_statistics(model).model_stats[0]
        return s.inference_count, s.execution_count, s.inference_stats.cache_hit.count

    previous, current = None, read()
    while current != previous:
        time.sleep(0.05)
        previous, current = current, read()
    return current


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_served_masks_match_sam_predictor(client, small_vit, photos, photo):
    image = photos[photo]
    reference = SamPredictor(small_vit.sam)
    reference.set_image(image)
    client.set_image(image)
    for (name, prompt), multimask, hq_only in product(PROMPTS.items(), (False, True), (False, True)):
        expected = reference.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only)
        got = client.predict(**prompt, multimask_output=multimask, hq_token_only=hq_only)
        assert [g.shape for g in got] == [e.shape for e in expected], name
        assert got[0].dtype == bool
        assert mask_iou(got[0], expected[0]) >= 0.99, (name, multimask, hq_only)
        assert close(got[2], expected[2]) and close(got[1], expected[1]), (name, multimask, hq_only)


@pytest.mark.parametrize("multimask, hq_only", [(False, False), (True, True)])
def test_several_prompt_sets_in_one_request(client, small_vit, photos, multimask, hq_only):
    image = photos["coffee"]
    points = np.array(
        [[[100.0, 100.0], [150.0, 200.0]], [[400.0, 200.0], [500.0, 300.0]], [[50.0, 50.0], [90.0, 20.0]]]
    )
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    boxes = np.array([[50.0, 40.0, 300.0, 350.0], [200.0, 10.0, 590.0, 390.0], [10.0, 10.0, 100.0, 100.0]])
    expected = official_batched(small_vit.sam, image, points, labels, boxes, multimask, hq_only)
    result = client.segment(
        encode_png(image),
        point_coords=points,
        point_labels=labels,
        box=boxes,
        multimask_output=multimask,
        hq_token_only=hq_only,
    )
    assert result.masks.shape == (3, 1, 400, 600) and result.scores.shape == (3, 1)
    for index in range(3):
        assert mask_iou(result.masks[index], expected[0][index]) >= 0.99
    assert close(result.low_res_logits, expected[2]) and close(result.scores, expected[1])


def test_second_prompt_on_an_image_skips_the_encoder(client, server, photos):
    image = np.ascontiguousarray(photos["astronaut"][::-1])  # an image no other test sends
    client.set_image(image)
    client.predict(**PROMPTS["point"])
    before = stats(server, "hqsam_encoder"), stats(server, "hqsam_encoder_guard")  # the guard holds the cache
    masks, _, _ = client.predict(**PROMPTS["box"])
    after = stats(server, "hqsam_encoder"), stats(server, "hqsam_encoder_guard")
    assert after[1][2] == before[1][2] + 1, "the second request was not a cache hit"
    assert after[0][1] == before[0][1], "the encoder ran again"
    assert masks.shape == (1, 512, 512)


def test_concurrent_clients_are_batched_and_correct(server, small_vit, photos):
    rng = np.random.default_rng(7)
    images = [np.ascontiguousarray(np.roll(photos["coffee"], int(rng.integers(1, 500)), axis=1)) for _ in range(8)]
    box = np.array([100.0, 50.0, 400.0, 350.0])
    before = stats(server, "hqsam_encoder")
    with HQSamClient(server.grpc_url) as shared, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda img: shared.segment(encode_png(img), box=box), images))
    after = stats(server, "hqsam_encoder")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 8 and executions < inferences, f"{inferences} images in {executions} encoder runs"
    for image, result in zip(images, results, strict=True):
        expected = official_batched(small_vit.sam, image, boxes=box[None])
        assert mask_iou(result.masks[0], expected[0][0]) >= 0.99


def test_async_client_serves_concurrent_requests(server, small_vit, photos):
    image = photos["chelsea_portrait"]
    boxes = [
        np.array([20.0, 30.0, 200.0, 250.0]),
        np.array([5.0, 100.0, 240.0, 290.0]),
        np.array([60.0, 10.0, 120.0, 90.0]),
    ]

    async def main():
        client = AsyncHQSamClient(server.grpc_url)
        try:
            return await asyncio.gather(*(client.segment(encode_png(image), box=box) for box in boxes))
        finally:
            await client.close()

    for box, result in zip(boxes, asyncio.run(main()), strict=True):
        expected = official_batched(small_vit.sam, image, boxes=box[None])
        assert result.masks.shape == (1, 1, *image.shape[:2])
        assert mask_iou(result.masks[0], expected[0][0]) >= 0.99


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixels are a few bytes: a bomb that a
    decoder reading pixels first would try to allocate."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


GOOD_IMAGE = encode_png(np.full((64, 96, 3), 120, np.uint8))
POINT = {"point_coords": np.array([[[10.0, 10.0]]], np.float32), "point_labels": np.array([[1]], np.int32)}

BAD_REQUESTS = {
    "non-image bytes": ({"image": b"hello, this is text"}, "not a PNG, JPEG or WebP"),
    "empty image": ({"image": b""}, "image is empty"),
    "truncated PNG": (
        {"image": encode_png(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))[:400]},
        "truncated or corrupt",
    ),
    "decompression bomb": ({"image": _png_header_only(60000, 60000)}, "refused as a decompression bomb"),
    "over the pixel limit": ({"image": _png_header_only(8000, 6000)}, "48000000 pixels, over the server's limit"),
    "base64 over the pixel limit": (
        {"image": base64.b64encode(_png_header_only(8000, 6000))},
        "48000000 pixels, over the server's limit",
    ),
    "base64 bomb": ({"image": base64.b64encode(_png_header_only(60000, 60000))}, "refused as a decompression bomb"),
    "bad base64": ({"image": base64.b64encode(GOOD_IMAGE)[:-3]}, "base64 text that does not decode"),
    "data URI that is not an image": ({"image": b"data:text/plain;base64,aGVsbG8="}, "must start data:image/"),
    "base64 of text": ({"image": base64.b64encode(b"hello, this is text")}, "not a PNG, JPEG or WebP"),
    "point outside the image": ({"point_coords": np.array([[[200.0, 10.0]]], np.float32)}, "outside the 96x64 image"),
    "NaN coordinate": ({"point_coords": np.array([[[np.nan, 10.0]]], np.float32)}, "NaN or infinite"),
    "infinite coordinate": ({"point_coords": np.array([[[10.0, np.inf]]], np.float32)}, "NaN or infinite"),
    "label outside -1..3": ({"point_labels": np.array([[5]], np.int32)}, "labels must be in -1..3"),
    "inverted box": ({"boxes": np.array([[50.0, 50.0, 10.0, 60.0]], np.float32)}, "inverted or empty"),
    "empty box": ({"boxes": np.array([[10.0, 10.0, 10.0, 40.0]], np.float32)}, "inverted or empty"),
    "mismatched prompt shapes": ({"point_labels": np.array([[1, 1]], np.int32)}, "point_labels has shape"),
    "prompt sets disagree": ({"boxes": np.array([[1.0, 1.0, 5.0, 5.0]] * 2, np.float32)}, "disagree in number"),
    "no prompt": ({"point_coords": None, "point_labels": None}, "no prompt"),
    "points without labels": ({"point_labels": None}, "point_coords was given without point_labels"),
    "mask of the wrong size": (
        {"mask_input": np.zeros((1, 1, 64, 64), np.float32)},
        "unexpected shape for input 'mask_input'",
    ),
}

DTYPES = {np.float32: "FP32", np.int32: "INT32", np.bool_: "BOOL"}


def raw_inputs(overrides: dict):
    """The ensemble's inputs built by hand, as a client that bypasses ours would."""
    tensors = {"image": GOOD_IMAGE, **POINT, **overrides}
    inputs = []
    for name, value in tensors.items():
        if value is None:
            continue
        if name == "image":
            array, dtype = np.array([value], dtype=np.object_), "BYTES"
        else:
            array, dtype = value, DTYPES[value.dtype.type]
        inputs.append(infer_input(grpcclient, name, array, dtype))
    return inputs


@pytest.fixture(scope="module")
def raw(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as connected:
        yield connected


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_refused_and_the_server_goes_on(raw, case):
    overrides, message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as error:
        raw.infer("hqsam", raw_inputs(overrides))
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.value.message()
    ok = raw.infer("hqsam", raw_inputs({}))
    assert ok.as_numpy("masks").shape == (1, 1, 64, 96)


def test_a_bad_request_does_not_fail_its_batch(server):
    results: dict[str, object] = {}
    barrier = threading.Barrier(6)

    def send(index: int) -> None:
        with grpcclient.InferenceServerClient(server.grpc_url) as own:
            barrier.wait()
            overrides = BAD_REQUESTS["inverted box"][0] if index % 2 else {}
            try:
                results[index] = own.infer("hqsam", raw_inputs(overrides)).as_numpy("masks").shape
            except InferenceServerException as exc:
                results[index] = exc.status()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(0, 6, 2)] == [(1, 1, 64, 96)] * 3
    assert [results[i] for i in range(1, 6, 2)] == ["StatusCode.INVALID_ARGUMENT"] * 3


def test_client_errors_carry_the_status(client):
    client.set_image(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ClientError) as error:
        client.predict(point_coords=[[40.0, 1.0]], point_labels=[1])
    assert error.value.status == "INVALID_ARGUMENT" and "outside the 32x32 image" in error.value.message
    with pytest.raises(ClientError, match="HWC uint8 RGB"):
        client.set_image(np.zeros((32, 32), np.float32))


def test_the_python_stubs_inherit_the_huge_pages_tunable(server):
    """The test servers turn `malloc_huge_pages` on (conftest); the stubs, where ONNX Runtime
    runs, inherit it, not only tritonserver."""
    stubs = stub_processes(server.process.pid)
    assert any(name.startswith("hqsam_encoder_") for name in stubs.values())
    for pid in stubs:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"GLIBC_TUNABLES={HUGE_PAGES_TUNABLE}".encode() in environ
