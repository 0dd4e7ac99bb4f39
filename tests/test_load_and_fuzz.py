"""Load, back-pressure and hostile input against the real server, with numbers.

Run with `-s` to see the figures the README's reliability section quotes.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from perceptserve.clients.triton_io import infer_input
from perceptserve.model_repository import hqsam
from perceptserve.model_repository.writer import write_models
from perceptserve.server.launcher import TritonServer
from perceptserve.server.memory import server_rss_mib
from tritonclient.utils import InferenceServerException

from perceptserve.imaging import encode_png
from perceptserve.settings import EncoderBatching, Settings

from .conftest import server_settings
from .test_serving import BAD_REQUESTS, raw_inputs

pytestmark = pytest.mark.server


def test_mixed_load_serves_every_valid_request_without_memory_growth(server):
    rng = np.random.default_rng(11)
    images = [encode_png(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for _ in range(4)]
    bad = list(BAD_REQUESTS.values())

    def one(index: int):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            start = time.perf_counter()
            if index % 4 == 3:
                overrides, _ = bad[index % len(bad)]
                try:
                    client.infer("hqsam", raw_inputs(overrides))
                    return "accepted-bad", 0.0
                except InferenceServerException as exc:
                    return exc.status(), time.perf_counter() - start
            box = np.array([[4.0 + index % 20, 4.0, 100.0, 90.0]], np.float32)
            result = client.infer(
                "hqsam",
                raw_inputs({"image": images[index % 4], "boxes": box, "point_coords": None, "point_labels": None}),
            )
            assert result.as_numpy("masks").shape == (1, 1, 96, 128)
            return "ok", time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:  # ONNX Runtime sizes its arenas to the largest batch: warm them
        list(pool.map(one, range(160)))
        before = server_rss_mib(server.process.pid)
        count = 240
        outcomes = list(pool.map(one, range(count)))
    after = server_rss_mib(server.process.pid)
    served = [t for status, t in outcomes if status == "ok"]
    refused = [status for status, _ in outcomes if status != "ok"]
    p99 = float(np.percentile(served, 99))
    print(
        f"\nload: {count} requests from 8 clients: {len(served)} valid served, 0 valid failed, "
        f"{len(refused)} invalid refused ({set(refused)}); p50 {np.percentile(served, 50) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms; server memory {before:.0f} -> {after:.0f} MiB"
    )
    assert len(served) == count - count // 4
    assert set(refused) == {"StatusCode.INVALID_ARGUMENT"}
    assert after - before < 100, f"server memory grew {after - before:.0f} MiB over {count} requests"


def test_a_full_queue_fails_fast_instead_of_piling_up(small_vit, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(small_vit.repository, repository)
    tight = Settings()
    tight = dataclasses.replace(
        tight,
        hqsam=dataclasses.replace(
            tight.hqsam,
            encoder_batching=EncoderBatching(
                max_batch_size=1, preferred_batch_sizes=(1,), max_queue_delay_us=0, max_queue_size=1
            ),
        ),
    )
    write_models(repository, hqsam.definitions(tight), tight)
    rng = np.random.default_rng(5)
    images = [encode_png(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)) for _ in range(12)]
    with TritonServer(repository, "cpu", server_settings()) as server:

        def one(image: bytes):
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                start = time.perf_counter()
                try:
                    client.infer("hqsam", raw_inputs({"image": image}))
                    return "ok", time.perf_counter() - start
                except InferenceServerException as exc:
                    return exc.status() + " " + exc.message(), time.perf_counter() - start

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, images))
    rejected = [(s, t) for s, t in outcomes if s != "ok"]
    served = [t for s, t in outcomes if s == "ok"]
    print(
        f"\nback-pressure: {len(served)} served (max {max(served):.2f} s), {len(rejected)} refused at once "
        f"(max {max(t for _, t in rejected):.2f} s)"
        if rejected
        else ""
    )
    assert rejected and served
    assert all(s.startswith("StatusCode.UNAVAILABLE") and "queue size" in s for s, _ in rejected)
    assert max(t for _, t in rejected) < max(served)


DTYPE_NAMES = {
    np.float32: "FP32",
    np.float64: "FP64",
    np.int32: "INT32",
    np.int64: "INT64",
    np.bool_: "BOOL",
    np.uint8: "UINT8",
}


def fuzz_values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Random values of `dtype`: plausible, non-finite or huge, small integers, or in-image."""
    kind = rng.integers(6)
    size = int(np.prod(shape))
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if kind == 0:
        data = rng.uniform(-10, 2000, size)
    elif kind == 1:
        data = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0], size)
    elif kind == 2:
        data = rng.integers(-5, 5, size)
    else:
        data = rng.uniform(0, 60, size)
    with np.errstate(invalid="ignore", over="ignore"):
        return (
            np.nan_to_num(data, nan=0, posinf=2**31 - 1, neginf=-(2**31)).astype(dtype).reshape(shape)
            if np.issubdtype(dtype, np.integer)
            else data.astype(dtype).reshape(shape)
        )


def fuzz_image(rng: np.random.Generator, good_image: bytes) -> bytes:
    """Random bytes, a truncated image, a PNG signature with garbage after it, or the good image."""
    image_kind = rng.integers(6)
    if image_kind == 0:
        return rng.bytes(int(rng.integers(0, 3000)))
    if image_kind == 1:
        return good_image[: int(rng.integers(1, len(good_image)))]
    if image_kind == 2:
        return b"\x89PNG\r\n\x1a\n" + rng.bytes(int(rng.integers(0, 200)))
    return good_image


FUZZ_SHAPES = {
    "point_coords": lambda rng, n: [n, int(rng.integers(0, 4)), 2],
    "point_labels": lambda rng, n: [n, int(rng.integers(0, 4))],
    "boxes": lambda rng, n: [n, 4],
    "mask_input": lambda rng, n: [n, 1, 256, 256],
    "multimask_output": lambda rng, n: [1],
    "hq_token_only": lambda rng, n: [1],
}
NATURAL_DTYPES = {
    "point_coords": np.float32,
    "point_labels": np.int32,
    "boxes": np.float32,
    "mask_input": np.float32,
    "multimask_output": np.bool_,
    "hq_token_only": np.bool_,
}


def fuzz_case(rng: np.random.Generator, good_image: bytes) -> list:
    """One hostile request: random image bytes and random prompt tensors of random shapes,
    types and values (NaN, inf, huge, empty)."""
    image = fuzz_image(rng, good_image)
    inputs = [
        infer_input(
            grpcclient, "image", np.array([image] * int(rng.choice([1, 1, 1, 0, 2])), dtype=np.object_), "BYTES"
        )
    ]
    n = int(rng.choice([0, 1, 1, 2, 3, 70]))
    for name, shape_of in FUZZ_SHAPES.items():
        if rng.random() < 0.45:
            continue
        shape = shape_of(rng, n)
        if rng.random() < 0.15:  # a wrong rank or size
            shape = [int(d) for d in rng.integers(0, 5, int(rng.integers(1, 5)))]
        if name == "mask_input" and rng.random() < 0.7:
            continue  # 256 KiB per mask: keep the run fast
        dtype = NATURAL_DTYPES[name] if rng.random() < 0.85 else rng.choice(list(DTYPE_NAMES))
        data = fuzz_values(rng, shape, dtype)
        inputs.append(infer_input(grpcclient, name, data, DTYPE_NAMES[np.dtype(dtype).type]))
    return inputs


def test_fuzzed_requests_get_an_error_or_a_result_never_a_crash(server):
    rng = np.random.default_rng(2024)
    good_image = encode_png(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    counts: dict[str, int] = {}
    before = server_rss_mib(server.process.pid)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _batch in range(20):
            for _ in range(100):
                try:
                    result = client.infer("hqsam", fuzz_case(rng, good_image), client_timeout=60)
                    masks = result.as_numpy("masks")
                    assert masks.ndim == 4 and masks.shape[2:] == (60, 80)
                    outcome = "result"
                except InferenceServerException as exc:
                    outcome = exc.status()
                    assert outcome == "StatusCode.INVALID_ARGUMENT", exc.message()
                counts[outcome] = counts.get(outcome, 0) + 1
            ok = client.infer("hqsam", raw_inputs({}))
            assert ok.as_numpy("masks").shape == (1, 1, 64, 96)
    after = server_rss_mib(server.process.pid)
    print(
        f"\nfuzz: 2000 hostile requests: {counts}; a valid request succeeded after each 100; "
        f"server memory {before:.0f} -> {after:.0f} MiB"
    )
    assert sum(counts.values()) == 2000 and counts.get("result", 0) > 0
