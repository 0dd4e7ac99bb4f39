"""The first request after the server reports ready, against the ones after it.

Every request carries a new image (the encoder runs each time, as for a new user), so the only
difference between the first and the rest is what nothing had run before: ONNX Runtime's first
real-shape runs and allocations, the python models' first calls and imports, the stub's shared
memory, the response cache's first insert. Warm-up before ready should leave none of it.
"""

from __future__ import annotations

import statistics
import time

from perceptserve.clients.hqsam import HQSamClient

from .workload import Workload


def first_request_ratio(client: HQSamClient, workload: Workload, requests: int = 6) -> dict:
    """Send `requests` new images with one point each, one at a time, on a server nothing has
    been sent to yet; the first's latency over the median of the others."""
    if requests < 3:
        raise ValueError("needs the first request and at least two after it")
    latencies = []
    for index, image in enumerate(workload.png_variants(requests)):
        start = time.perf_counter()
        client.segment(image, **workload.point(index))
        latencies.append((time.perf_counter() - start) * 1000.0)
    warm = statistics.median(latencies[1:])
    return {"first_ms": latencies[0], "warm_median_ms": warm, "ratio": latencies[0] / warm, "latencies_ms": latencies}
