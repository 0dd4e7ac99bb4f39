"""Memory-aware batching, admission and retryable failures (issue 21), at test size.

The encoder's memory line is measured by the export's probe on the session's small ViT; a budget
that leaves room for two images must make the chart's server write batch limits of 2, serve 8
concurrent clients, and keep the server's peak memory under the budget. Its stub killed under
load, the lost requests come back UNAVAILABLE and our clients' retries succeed. The real size
(vit_h) is a benchmark: benchmarks/README.md, "Memory-aware batching". Run with `-s` for figures.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from perceptserve.clients import retry
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.export import memory_probe
from perceptserve.model_repository import configs, memory
from perceptserve.server.memory import server_peak_mib
from perceptserve.server.metrics import samples
from perceptserve.server.stubs import stub_processes

from perceptserve.hqsam.families import HQSAM
from perceptserve.imaging import encode_png
from perceptserve.parsing import parse_bytes
from perceptserve.settings import MemoryBudget

from .chart_server import ChartServer, http_get, process_gone, render

GIB = 1 << 30


def test_batch_limits_share_the_room_left_by_the_reserve_and_the_fixed_parts():
    records = {
        "a": memory.MemoryRecord("a", fixed_bytes=2 * GIB, per_item_bytes=3 * GIB, peaks={}),
        "b": memory.MemoryRecord("b", fixed_bytes=1 * GIB, per_item_bytes=GIB // 2, peaks={}),
    }
    # 24 - 2 reserve - 3 fixed = 19 GiB, 9.5 each: a 3 images, b 19 capped at 8
    assert memory.batch_limits(records, 24 * GIB, 2 * GIB, cap=8) == {"a": 3, "b": 8}
    assert memory.batch_limits(records, 4 * GIB, 2 * GIB, cap=8) == {"a": 1, "b": 1}  # never below one
    assert memory.preferred_sizes((4, 8), 3) == [3]
    assert memory.preferred_sizes((4, 8), 6) == [4, 6]


def test_the_budget_is_the_setting_else_the_cgroup_limit_else_the_machine(tmp_path):
    unlimited, limited = tmp_path / "v2.max", tmp_path / "v1.limit"
    unlimited.write_text("max\n")
    limited.write_text(f"{12 * GIB}\n")
    assert memory.container_limit((str(unlimited), str(tmp_path / "missing"))) is None
    assert memory.container_limit((str(unlimited), str(limited))) == 12 * GIB
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683132 kB\nMemFree: 1 kB\n")
    assert memory.machine_memory(str(meminfo)) == 24683132 * 1024
    assert memory.budget_bytes(MemoryBudget(budget_bytes=5)) == 5
    assert [parse_bytes(text) for text in ("20Gi", "12G", "512Mi", "1.5G", "1024")] == [
        20 * GIB,
        12 * GIB,
        512 << 20,
        3 * GIB // 2,
        1024,
    ]


def test_retries_only_unavailable_with_bounded_backoff_and_says_so():
    said: list[str] = []
    policy = retry.RetryPolicy(attempts=5, first_backoff_s=0.01, max_backoff_s=0.02, on_retry=said.append)
    failures = [
        ClientError("queue full", "UNAVAILABLE"),
        ClientError("Socket closed", "UNAVAILABLE"),
        ClientError("Request for unknown model: 'hqsam' has no available versions", "NOT_FOUND"),
    ]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "served"

    assert retry.call(policy, flaky) == "served"
    assert said == [
        "UNAVAILABLE (queue full): retrying in 0.01 s (attempt 2 of 5)",
        "UNAVAILABLE (Socket closed): retrying in 0.02 s (attempt 3 of 5)",
        "NOT_FOUND (Request for unknown model: 'hqsam' has no available versions): retrying in 0.02 s (attempt 4 of 5)",
    ]
    refusals = (("INVALID_ARGUMENT", "bad box"), ("NOT_FOUND", "Request for unknown model: 'x' is not found"))
    for status, message in refusals:
        with pytest.raises(ClientError, match=status):
            retry.call(policy, lambda: (_ for _ in ()).throw(ClientError(message, status)))  # noqa: B023
    sent = []

    def down():
        sent.append(1)
        raise ClientError("failed to connect", "UNAVAILABLE")

    with pytest.raises(ClientError, match="UNAVAILABLE"):
        retry.call(policy, down)
    assert len(sent) == 5  # bounded: attempts in all


@pytest.fixture(scope="module")
def measured(small_vit, tmp_path_factory):
    """A copy of the session's small ViT repository with the encoder's memory line measured."""
    repository = tmp_path_factory.mktemp("admission") / "repository"
    shutil.copytree(small_vit.repository, repository)
    onnx_file = configs.cpu_onnx_file(repository / HQSAM.encoder / "1")
    memory_probe.measure(HQSAM.encoder, onnx_file).write(repository)
    return repository


def test_the_probe_line_predicts_a_larger_batch(measured):
    record = memory.records(measured)[HQSAM.encoder]
    onnx_file = configs.cpu_onnx_file(measured / HQSAM.encoder / "1")
    actual = memory_probe.peak_bytes(onnx_file, 3)
    predicted = record.fixed_bytes + 3 * record.per_item_bytes
    print(f"\nsmall ViT encoder: {record.per_item_bytes / 2**20:.0f} MiB per image; batch 3 {actual / 2**20:.0f} MiB, "
          f"line {predicted / 2**20:.0f} MiB")  # fmt: skip
    assert record.per_item_bytes > 50 << 20  # a 1024x1024 image's activations, not noise
    assert abs(actual - predicted) < 0.15 * actual


def server_peak_bytes(server: ChartServer) -> int:
    """tritonserver's and its stubs' resident high-water marks (VmHWM) added up: at least their
    peak together, whenever each peaked."""
    return int(server_peak_mib(server.triton_pid()) * (1 << 20))


def test_a_small_budget_limits_batches_and_a_killed_stub_is_retried(measured):
    record = memory.records(measured)[HQSAM.encoder]
    reserve = MemoryBudget().reserve_bytes
    budget = reserve + record.fixed_bytes + int(2.5 * record.per_item_bytes)  # room for two images
    server = ChartServer(render("--set", f"triton.memoryBudget={budget}"), measured, "cpu")
    rng = np.random.default_rng(21)
    images = [encode_png(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) for _ in range(16)]  # distinct
    said: list[str] = []
    # A restart took about 2 minutes here under load (30 s of Triton's exit timeout, then start and
    # warm-up): retry every 10 s for up to about 3 minutes, so the test does not hang on the bound.
    policy = retry.RetryPolicy(attempts=20, first_backoff_s=1.0, max_backoff_s=10.0, on_retry=said.append)

    def segment(image: bytes):
        with HQSamClient(server.grpc_url, retry_policy=policy) as client:
            return client.segment(image, box=np.array([4.0, 4.0, 100.0, 90.0])).masks.shape

    try:
        server.wait_for("ready:")
        guard = configs.parse((measured / HQSAM.encoder_guard / "configs" / "cpu.pbtxt").read_text())
        encoder = configs.parse((measured / HQSAM.encoder / "configs" / "cpu.pbtxt").read_text())
        assert (guard.max_batch_size, list(guard.dynamic_batching.preferred_batch_size)) == (2, [2])
        assert encoder.max_batch_size == 2 and not encoder.HasField("dynamic_batching")
        with ThreadPoolExecutor(8) as pool:
            shapes = list(pool.map(segment, images[:8]))
        assert shapes == [(1, 1, 120, 160)] * 8 and said == []
        values = samples(http_get(server.url("metrics", "/metrics"))[1])
        runs = {name: values[(metric, HQSAM.encoder)]
                for name, metric in (("items", "nv_inference_count"), ("runs", "nv_inference_exec_count"))}  # fmt: skip
        peak = server_peak_bytes(server)
        print(f"\nbudget {budget / GIB:.2f} GiB: 8 clients, 8 served; encoder {runs['items']:.0f} images in "
              f"{runs['runs']:.0f} runs; server peak at most {peak / GIB:.2f} GiB")  # fmt: skip
        assert peak < budget

        # The encoder's stub killed while 8 more clients wait: every request is answered.
        victim = next(p for p, n in stub_processes(server.triton_pid()).items() if n.startswith("hqsam_encoder_0"))
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(segment, image) for image in images[8:]]
            threading.Event().wait(0.5)
            os.kill(victim, signal.SIGKILL)
            while not process_gone(victim):
                time.sleep(0.01)
            shapes = [future.result(timeout=300) for future in pending]
        assert shapes == [(1, 1, 120, 160)] * 8
        guard = sum("is not healthy" in line for line in said)
        print(f"after the kill: {len(said)} retries, {guard} of them the guard's UNAVAILABLE; last: {said[-1]}")
        # Lost with the stub or to the restart: UNAVAILABLE, or NOT_FOUND while the models unload; never INTERNAL.
        assert said and all(line.startswith(("UNAVAILABLE", "NOT_FOUND")) for line in said)
        server.wait_for("died; restarting", timeout=5)
    finally:
        assert server.stop() == 0
