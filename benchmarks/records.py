"""What one benchmark run produced: a record per mode x stage x concurrency (x batch), and the
context that makes the figures comparable with another run: the machine, the versions, the
model type and the options.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata

from .statistics import LatencySummary

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Record:
    mode: str
    stage: str
    concurrency: int
    latency: LatencySummary
    warmup_ms: list[float]
    batch: int = 1
    server: dict[str, dict] | None = None  # Triton's split per model, for the triton mode

    @property
    def p50_per_image_ms(self) -> float:
        return self.latency.p50_ms / self.batch

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "stage": self.stage,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "latency_ms": {k: v for k, v in self.latency.to_json().items() if k.endswith("_ms")},
            "requests": self.latency.count,
            "wall_s": self.latency.wall_s,
            "throughput_images_per_s": self.latency.throughput_per_s,
            "warmup": {"requests": len(self.warmup_ms), "latencies_ms": self.warmup_ms},
            "server": self.server,
        }


@dataclass
class BenchResult:
    model_type: str
    weights: str
    command: str
    machine: dict
    versions: dict
    options: dict
    records: list[Record] = field(default_factory=list)
    int8: dict | None = None  # mask agreement and speed-up of the int8 encoder
    export_parity: dict | None = None
    served_agreement: dict | None = None  # served masks against the official predictor's
    cold_start: dict | None = None  # the first request after ready against the next ones
    floor: dict | None = None  # the encoder's arithmetic at this CPU's best GEMM rates (`floor`)
    family: str = "hqsam"  # the SAM family benchmarked (`perceptserve.hqsam.families`)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def find(self, mode: str, stage: str, concurrency: int = 1, batch: int = 1) -> Record | None:
        for record in self.records:
            if (record.mode, record.stage, record.concurrency, record.batch) == (mode, stage, concurrency, batch):
                return record
        return None

    @property
    def has_gpu(self) -> bool:
        return bool(self.machine.get("gpu"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def load_average() -> float | None:
    """The 1-minute load average: how much else ran on the machine (figures from a busy machine
    are slower on every side; ratios suffer less)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info() -> dict:
    """The machine the figures belong to; the run adds the load average at its end."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "load_average_1m": load_average(),
        "load_average_1m_end": None,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions(tritonserver: str | None) -> dict:
    """Library versions; `tritonserver` is what the server reported (None: not run)."""
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "segment_anything_hq": _version("segment-anything-hq"),
        "tritonserver": tritonserver,
        "tritonclient": _version("tritonclient"),
        "perceptserve": _version("perceptserve"),
        "numpy": _version("numpy"),
    }
