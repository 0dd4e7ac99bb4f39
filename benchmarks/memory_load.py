"""Concurrent clients against a served repository, with the server's memory watched: does every
request succeed, does any python stub die, and does the server stay under its memory budget?

    python -m perceptserve.benchmarks.memory_load --repository REPO [--clients 8] [--memory-budget 20G]

Runs `perceptserve serve` (the supervisor; its batch limits fitted to the budget at start), sends
one distinct photo with one point from each of `--clients` clients at once (`HQSamClient`, its
retries on), samples the resident memory of the supervisor, tritonserver and its stubs every 0.2 s, and prints
one row of the README's reliability table: model, clients, budget, batch limit, peak, failures.
The full-size run (vit_h) needs the machine: run it alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from perceptserve.clients import retry
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.model_repository import configs, memory
from perceptserve.server import free_port
from perceptserve.server.memory import PeakSampler
from skimage import data as sample_images

from perceptserve.hqsam.families import HQSAM
from perceptserve.imaging import encode_png
from perceptserve.parsing import parse_bytes
from perceptserve.settings import MemoryBudget

GIB, MIB = 1 << 30, 1 << 20


def distinct_photos(count: int) -> list[bytes]:
    """`count` different photos: scikit-image's three, flipped and cropped (no two hit the cache)."""
    photos = [sample_images.astronaut(), sample_images.coffee(), sample_images.chelsea()]
    variants = []
    for index in range(count):
        photo = photos[index % 3]
        step = index // 3
        photo = photo[step * 7 :, :: (-1 if step % 2 else 1)]
        variants.append(encode_png(np.ascontiguousarray(photo)))
    return variants


def serve(repository: Path, budget: str | None) -> tuple[subprocess.Popen, str, list[str]]:
    """`perceptserve serve` on free ports, once ready: (process, gRPC URL, its output so far)."""
    grpc_port = free_port()
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(free_port()), "--metrics-port", str(free_port())]
    command = [sys.executable, "-m", "perceptserve.cli", "serve", "--repository", str(repository), *ports]
    command += ["--memory-budget", budget] if budget else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("ready:"):
            break
    if process.poll() is not None:
        raise RuntimeError("perceptserve serve exited:\n" + "".join(output[-30:]))
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    return process, f"127.0.0.1:{grpc_port}", output


def run(repository: Path, clients: int, budget: str | None) -> dict:
    process, url, output = serve(repository, budget)
    said: list[str] = []
    policy = retry.RetryPolicy(on_retry=lambda line: (said.append(line), print(line, flush=True)))

    def one(image: bytes) -> str:
        with HQSamClient(url, retry_policy=policy, timeout_s=3600) as client:
            try:
                client.segment(image, point_coords=[[200.0, 150.0]], point_labels=[1])
                return "ok"
            except ClientError as error:
                return str(error)[:200]

    try:
        started = time.monotonic()
        with PeakSampler(process.pid, interval_s=0.2) as watch, ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(one, distinct_photos(clients)))
        seconds = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(120)
    guard = configs.parse((repository / HQSAM.encoder_guard / "configs" / "cpu.pbtxt").read_text())
    settings = MemoryBudget(budget_bytes=parse_bytes(budget) if budget else None)
    return {
        "model": repository.name,
        "clients": clients,
        "budget_gib": memory.budget_bytes(settings) / GIB,
        "max_batch_size": guard.max_batch_size,
        "peak_gib": watch.peak_mib * MIB / GIB,
        "served": outcomes.count("ok"),
        "failures": [outcome for outcome in outcomes if outcome != "ok"],
        "retries": said,
        "stub_deaths": [line.strip() for line in output if "died; restarting" in line],
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="an exported hqsam repository")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--memory-budget", help="as `perceptserve serve --memory-budget` (default: detected)")
    args = parser.parse_args(argv)
    result = run(args.repository, args.clients, args.memory_budget)
    print(
        f"| {result['model']} | {result['clients']} | {result['budget_gib']:.1f} GiB | {result['max_batch_size']} | "
        f"{result['peak_gib']:.1f} GiB | {result['served']} of {result['clients']} served, "
        f"{len(result['stub_deaths'])} stub deaths, {len(result['retries'])} retries | {result['seconds']:.0f} s |"
    )
    for failure in result["failures"] + result["stub_deaths"]:
        print(f"  {failure}")
    ok = result["served"] == args.clients and not result["stub_deaths"] and result["peak_gib"] < result["budget_gib"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
