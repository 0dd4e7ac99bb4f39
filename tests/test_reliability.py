"""Faults under `perceptserve serve`: a python stub killed mid-run, SIGTERM during requests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.server import free_port
from perceptserve.server.stubs import stub_processes

from perceptserve.imaging import encode_png

pytestmark = pytest.mark.server


class Serve:
    """`perceptserve serve` in a subprocess, its output read line by line."""

    def __init__(self, repository, tmp_path) -> None:
        self.grpc_port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perceptserve.cli",
                "serve",
                "--repository",
                str(repository),
                "--grpc-port",
                str(self.grpc_port),
                "--http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
                "--log-file",
                str(tmp_path / "server.log"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.url = f"127.0.0.1:{self.grpc_port}"

    def wait_for(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "perceptserve serve exited"
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout} s")

    def triton_pid(self) -> int:
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and self._parent(p) == self.process.pid]
        return children[0]

    @staticmethod
    def _parent(pid: str) -> int:
        try:
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return -1


def segment(url: str, image: np.ndarray):
    with HQSamClient(url) as client:
        return client.segment(encode_png(image), box=np.array([2.0, 2.0, 40.0, 30.0]))


def test_a_killed_python_stub_is_restarted_and_requests_succeed_after(small_vit, tmp_path):
    serve = Serve(small_vit.repository, tmp_path)
    try:
        serve.wait_for("ready:")
        image = np.full((48, 64, 3), 90, np.uint8)
        assert segment(serve.url, image).masks.shape == (1, 1, 48, 64)
        stubs = stub_processes(serve.triton_pid())
        victim = next(pid for pid, name in stubs.items() if name.startswith("hqsam_preprocess"))
        os.kill(victim, signal.SIGKILL)
        assert "restarting tritonserver" in serve.wait_for("died; restarting", timeout=30)
        serve.wait_for("ready:")
        assert segment(serve.url, image).masks.shape == (1, 1, 48, 64)
    finally:
        serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(60) == 0


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits(small_vit, tmp_path):
    serve = Serve(small_vit.repository, tmp_path)
    serve.wait_for("ready:")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(6)]  # distinct: no cache hits
    with ThreadPoolExecutor(6) as pool:
        in_flight = [pool.submit(segment, serve.url, image) for image in images]
        time.sleep(0.5)
        stopped_at = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        results = [future.result(timeout=120) for future in in_flight]
    assert all(r.masks.shape == (1, 1, 300, 400) for r in results)
    assert serve.process.wait(60) == 0
    assert time.monotonic() - stopped_at < 20  # drained when quiet, not at the 30 s exit timeout
    with pytest.raises(ClientError, match="UNAVAILABLE"):
        segment(serve.url, images[0])


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
