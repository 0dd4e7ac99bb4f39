"""Session exports started in a second process as soon as collection shows a test needs them.

Most of an export's minutes are torch's dynamo exporter tracing Python, on one core. On CI's two
cores the tiny DatasetDM export (four and a half minutes alone) then overlaps the tests that run
before its first user instead of adding its minutes to the session. Its fixture takes the result,
or exports in-process when nothing was started (a run of one test file)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def _one_thread() -> None:
    """The worker leaves the second core to the tests (its tracing needs only one)."""
    import torch

    torch.set_num_threads(1)


class BackgroundExports:
    """At most one worker process, started on the first `start`; `result` waits for a started
    job, re-raising its exception with the worker's traceback."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: dict[str, Future] = {}

    def start(self, name: str, function: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            # spawn: the worker must not inherit the collecting process's torch thread pools.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_one_thread)
        self._jobs[name] = self._pool.submit(function, *args)

    def result(self, name: str) -> Any | None:
        """The started job's result, or None when `name` was not started."""
        job = self._jobs.pop(name, None)
        return None if job is None else job.result()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


EXPORTS = BackgroundExports()
