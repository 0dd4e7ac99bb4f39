"""Resident memory of a running tritonserver and its python-backend stubs, read from /proc.

Each python model runs in its own stub process (a child of tritonserver), so the server's memory
is the sum over that process tree (from tritonserver, or from the supervisor above it): `VmRSS`
now, and `VmHWM` (each process's peak) for an upper bound of the peak over a request.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .stubs import stub_name

MIB = 1024  # /proc reports kB


def _status(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:  # the process ended while we read
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _tree(pid: int) -> dict[int, dict[str, str]]:
    """The status of `pid` and of every process below it, from one pass over /proc: a stub's
    parent is tritonserver, whose parent may be `perceptserve serve` (the supervisor)."""
    statuses = {int(path.parent.name): _status(path) for path in Path("/proc").glob("[0-9]*/status")}
    below: dict[int, list[int]] = {}
    for child, fields in statuses.items():
        below.setdefault(int(fields.get("PPid", "0").strip() or 0), []).append(child)
    tree, pending = {}, [pid]
    while pending:
        current = pending.pop()
        pending.extend(below.get(current, []))
        tree[current] = statuses.get(current, {})
    return tree


def _mib(status: dict[str, str], field: str) -> float:
    return int(status.get(field, "0 kB").split()[0]) / MIB


def _tree_field(pid: int, field: str) -> float:
    return sum(_mib(status, field) for status in _tree(pid).values())


def by_process_mib(pid: int, field: str = "VmRSS") -> dict[str, float]:
    """`field` of each process of the tree, MiB, by name: a python stub by its model instance
    (`hqsam_encoder_0_0`), the others by their command (`tritonserver`). Where a request's
    memory went: read `VmHWM` after it."""
    return {
        stub_name(process) or f"{status.get('Name', '?').strip()} ({process})": _mib(status, field)
        for process, status in _tree(pid).items()
    }


def server_rss_mib(pid: int) -> float:
    """Resident memory of process `pid` (tritonserver) and every process below it (the python stubs), MiB."""
    return _tree_field(pid, "VmRSS")


def server_peak_mib(pid: int) -> float:
    """The sum of each process's peak resident memory (`VmHWM`), MiB: at least the tree's peak."""
    return _tree_field(pid, "VmHWM")


class PeakSampler:
    """The server's resident memory sampled every `interval_s` while in a `with` block."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, server_rss_mib(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
