"""Progress lines for long steps (export, parity, benchmarks): what is running and how long
each step took, on stderr so that reports on stdout stay clean."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Steps:
    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {title} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        yield
        print(
            f"[{self.done}/{self.total}] {title}: done in {time.perf_counter() - start:.1f} s",
            file=self.stream,
            flush=True,
        )
