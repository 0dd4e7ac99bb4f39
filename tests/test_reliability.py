"""Faults under the Helm chart's own server command line (`perceptserve serve`, supervising the
bundled tritonserver that stands in for the NGC image's): a python stub killed mid-run, SIGTERM
during requests. Run with `-s` to print the measured times."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from perceptserve.clients import retry
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.server.metrics import completed, samples
from perceptserve.server.stubs import children, stub_processes

from perceptserve.imaging import encode_png

from .chart_server import ChartServer, http_get, process_gone, render, triton_container

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def chart_docs() -> list[dict]:
    return render()


def segment(url: str, image: np.ndarray, retry_policy: retry.RetryPolicy = retry.DEFAULT):
    with HQSamClient(url, retry_policy=retry_policy) as client:
        return client.segment(encode_png(image), box=np.array([2.0, 2.0, 40.0, 30.0]))


def test_a_killed_python_stub_fails_readiness_and_the_server_recovers(small_vit, chart_docs):
    probe_period = triton_container(chart_docs)["readinessProbe"]["periodSeconds"]
    server = ChartServer(chart_docs, small_vit.repository, "cpu")
    try:
        server.wait_for("ready:")
        image = np.full((48, 64, 3), 90, np.uint8)
        assert segment(server.grpc_url, image).masks.shape == (1, 1, 48, 64)
        assert server.ready() == (200, "ready\n")
        stubs = stub_processes(server.triton_pid())
        victim = next(pid for pid, name in stubs.items() if name.startswith("hqsam_preprocess"))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while not process_gone(victim):
            time.sleep(0.01)
        # The probe reads /proc when asked: the first one after the stub is gone already fails
        # (Triton's own /v2/health/ready would still answer 200 here).
        status, reason = server.ready()
        flipped_s = time.monotonic() - killed_at
        assert status == 503, reason
        assert "hqsam_preprocess" in reason or "restarting" in reason, reason
        assert "restarting tritonserver" in server.wait_for("died; restarting", timeout=30)
        server.wait_for("ready:")
        restarted_s = time.monotonic() - killed_at
        assert server.ready() == (200, "ready\n")
        assert segment(server.grpc_url, image).masks.shape == (1, 1, 48, 64)
        print(
            f"\nreadiness false {flipped_s:.2f} s after the kill (probe period {probe_period} s); "
            f"serving again after {restarted_s:.1f} s"
        )
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_in_flight_ensemble_requests_then_exits(small_vit, chart_docs):
    server = ChartServer(chart_docs, small_vit.repository, "cpu")
    server.wait_for("ready:")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(6)]  # distinct: no cache hits

    def counts() -> tuple[float, float]:
        """Requests past the ensemble's first step, and answered (warm-up requests included)."""
        values = samples(http_get(server.url("metrics", "/metrics"))[1])
        return completed(values, "hqsam_preprocess"), completed(values, "hqsam")

    before = counts()
    with ThreadPoolExecutor(6) as pool:
        in_flight = [pool.submit(segment, server.grpc_url, image) for image in images]
        # SIGTERM once all 6 are inside Triton, past the ensemble's first step (Triton would fail
        # them between steps), and at least one not yet answered.
        now = counts()
        while now[0] - before[0] < 6:
            time.sleep(0.05)
            now = counts()
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answered = now[1] - before[1]
        assert answered < 6, "all 6 were answered before SIGTERM: nothing in flight to drain"
        status, reason = server.ready()
        while status == 200:  # the signal handler runs at the supervisor's next bytecode
            status, reason = server.ready()
        assert status == 503 and reason.startswith("draining"), (status, reason)
        drained = [server.wait_for("stopping tritonserver", timeout=120)]
        try:
            results = [future.result(timeout=300) for future in in_flight]
        except ClientError as error:
            raise AssertionError(f"{error} (supervisor: {drained[0].strip()})") from None
    assert all(r.masks.shape == (1, 1, 300, 400) for r in results)
    assert server.process.wait(120) == 0
    exited_s = time.monotonic() - stopped_at
    print(
        f"\nSIGTERM with {6 - answered:.0f} of 6 requests in flight; all 6 finished; {drained[0].strip()}; "
        f"exited {exited_s:.1f} s after SIGTERM"
    )
    assert drained[0].startswith("drained after"), drained  # quiet, not the drain timeout
    with pytest.raises(ClientError, match="UNAVAILABLE"):
        segment(server.grpc_url, images[0], retry.NO_RETRY)


def installed_layout(root: Path) -> Path:
    """The bundled tritonserver arranged as NGC's image installs it under /opt/tritonserver."""
    from perceptserve.server.installation import TritonInstallation

    bundled = TritonInstallation.bundled()
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").symlink_to(bundled.binary)
    (root / "backends").symlink_to(bundled.backends)
    (root / "caches").symlink_to(bundled.caches)
    (root / "lib").symlink_to(bundled.libraries[0])
    return root


def test_serve_runs_an_installed_tritonserver(small_vit, tmp_path):
    """`--tritonserver PATH`: the NGC image's layout, with its own backends and libraries."""
    import subprocess

    from perceptserve.server import free_port

    root = installed_layout(tmp_path / "tritonserver")
    grpc_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "perceptserve.cli", "serve", "--repository", str(small_vit.repository),
         "--tritonserver", str(root), "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
         "--metrics-port", str(free_port()), "--log-file", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for line in process.stdout:
            if line.startswith("ready:"):
                break
        assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        (triton,) = children(process.pid)
        argv = Path(f"/proc/{triton}/cmdline").read_bytes().decode().split("\0")
        assert argv[0] == str(root / "bin" / "tritonserver")
        assert f"--backend-directory={root / 'backends'}" in argv
        assert segment(f"127.0.0.1:{grpc_port}", np.full((48, 64, 3), 90, np.uint8)).masks.shape == (1, 1, 48, 64)
    finally:
        process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0


METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="hqsam",version="1"} 10
nv_inference_request_success{model="hqsam_preprocess",version="1"} 12
nv_inference_request_failure{model="hqsam_preprocess",version="1"} 3
nv_inference_request_failure{model="hqsam",version="1"} 3
nv_inference_pending_request_count{model="hqsam_encoder",version="1"} 1
nv_inference_pending_request_count{model="hqsam_preprocess",version="1"} 0
"""


def test_in_flight_counts_queued_and_between_steps():
    from perceptserve.server.metrics import in_flight

    assert in_flight(METRICS, {"hqsam": "hqsam_preprocess"}) == 1 + (15 - 13)
    assert in_flight(METRICS.replace(" 12\n", " 10\n").replace("} 1\n", "} 0\n"), {"hqsam": "hqsam_preprocess"}) == 0
