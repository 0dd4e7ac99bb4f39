"""Latency percentiles, throughput and ratios: the arithmetic every report figure comes from.

Kept free of any model or server code so that it can be checked on recorded figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), so a p99 of a short
    run lies between its two slowest requests instead of jumping to the maximum."""
    if not len(values):
        raise ValueError("no values to take a percentile of")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, or None when either side was not measured (or is zero)."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles in milliseconds and throughput over the wall time of one timed run.

    Throughput is items finished per second of wall time, so with several requests in flight
    it is more than 1 / mean latency; `items_per_request` counts images per request (a batch).
    """

    count: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    wall_s: float
    throughput_per_s: float

    @classmethod
    def from_seconds(cls, latencies_s: Sequence[float], wall_s: float, items_per_request: int = 1) -> LatencySummary:
        ms = [1000.0 * value for value in latencies_s]
        p50, p90, p95, p99 = (percentile(ms, q) for q in PERCENTILES)
        return cls(
            count=len(ms),
            mean_ms=float(np.mean(ms)),
            min_ms=min(ms),
            max_ms=max(ms),
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            wall_s=wall_s,
            throughput_per_s=len(ms) * items_per_request / wall_s if wall_s > 0 else 0.0,
        )

    def to_json(self) -> dict:
        return asdict(self)
