"""Measure what one more batch item costs a served ONNX model, at export.

Each batch size runs in a fresh subprocess that opens the session as the server's python stub
does (`onnxruntime_session.cpu_session`, no arena), runs one batch of zeros and reports its peak
resident memory (VmHWM): weights, ONNX Runtime, the interpreter and the batch's activations. Two
sizes give
the line `peak(n) = fixed + n * per_item`; `model_repository/memory.py` records it beside the
model and sizes the batches from it. A subprocess, not this process, because an export holds the
torch model and ONNX Runtime's peak would hide under it.

    python -m perceptserve.export.memory_probe MODEL.onnx BATCH   -> prints the peak in bytes
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from perceptserve.model_repository.memory import MemoryRecord

PROBE_BATCHES = (1, 2)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def zeros_batch(session, batch: int) -> dict[str, np.ndarray]:
    """Zeros for every input: the first dimension `batch`, any other variable one 1."""
    feeds = {}
    for tensor in session.get_inputs():
        shape = [batch] + [dim if isinstance(dim, int) else 1 for dim in tensor.shape[1:]]
        feeds[tensor.name] = np.zeros(shape, dtype=_NUMPY_TYPES[tensor.type])
    return feeds


def peak_bytes(onnx_file: Path, batch: int, threads: int = 0) -> int:
    """Peak resident memory of a fresh process running one batch of `batch` through `onnx_file`."""
    command = [sys.executable, "-m", "perceptserve.export.memory_probe", str(onnx_file), str(batch), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {onnx_file} at batch {batch} failed: {done.stderr.strip()[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def measure(model: str, onnx_file: Path, threads: int = 0) -> MemoryRecord:
    """The model's memory line from batches of 1 and 2 (a per-item cost of at least one byte)."""
    peaks = {batch: peak_bytes(onnx_file, batch, threads) for batch in PROBE_BATCHES}
    per_item = max(1, (peaks[2] - peaks[1]))
    return MemoryRecord(model=model, fixed_bytes=max(0, peaks[1] - per_item), per_item_bytes=per_item, peaks=peaks)


def peak_resident_bytes(status: str = "/proc/self/status") -> int:
    """This process's resident high-water mark (VmHWM). Not `ru_maxrss`: Linux carries that over
    from the parent across fork and exec, so a probe started by a large process reads the parent's."""
    for line in Path(status).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in {status}")


def _main(onnx_file: str, batch: str, threads: str = "0") -> None:
    from perceptserve.onnxruntime_session import cpu_session

    session = cpu_session(onnx_file, threads=int(threads), memory_arena=False)
    session.run(None, zeros_batch(session, int(batch)))
    print(json.dumps({"peak_bytes": peak_resident_bytes()}))


if __name__ == "__main__":
    _main(*sys.argv[1:])
