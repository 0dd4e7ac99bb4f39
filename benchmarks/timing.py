"""Timing calls one at a time or with several in flight (a closed loop of N clients).

A stage is a list of prepared inputs and a call on one of them; inputs are prepared before the
clock starts (image variants, PNG encoding, resizing), so only the call is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .statistics import LatencySummary


@dataclass(frozen=True)
class Stage:
    """One thing to time: `prepare(n)` builds n inputs, `call(item)` is the timed work.
    `items_per_request` is the number of images one call handles (a batch)."""

    name: str
    prepare: Callable[[int], Sequence[Any]]
    call: Callable[[Any], object]
    items_per_request: int = 1


@dataclass(frozen=True)
class TimedRun:
    latencies_s: list[float]
    wall_s: float


def run_calls(call: Callable[[Any], object], items: Sequence[Any], concurrency: int) -> TimedRun:
    """Each item's latency and the wall time of the whole run.

    With concurrency N, N workers each take the next item as soon as their previous call
    returns: N requests stay in flight, as N independent clients would keep them.
    """

    def timed(item: Any) -> float:
        start = time.perf_counter()
        call(item)
        return time.perf_counter() - start

    start = time.perf_counter()
    if concurrency <= 1:
        latencies = [timed(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(timed, items))
    return TimedRun(latencies, time.perf_counter() - start)


@dataclass(frozen=True)
class Measurement:
    """The timed requests' summary; the warm-up's latencies are kept apart and reported.
    `before` is what the snapshot callback returned between the two."""

    summary: LatencySummary
    warmup_ms: list[float]
    before: Any = None


def measure(
    stage: Stage, requests: int, warmup: int, concurrency: int, snapshot: Callable[[], Any] = lambda: None
) -> Measurement:
    """Warm up, take `snapshot()` (the server's counters), then time `requests` calls."""
    items = stage.prepare(warmup + requests)
    warm = run_calls(stage.call, items[:warmup], concurrency) if warmup else TimedRun([], 0.0)
    before = snapshot()
    timed = run_calls(stage.call, items[warmup:], concurrency)
    summary = LatencySummary.from_seconds(timed.latencies_s, timed.wall_s, stage.items_per_request)
    return Measurement(summary, [1000.0 * value for value in warm.latencies_s], before)
