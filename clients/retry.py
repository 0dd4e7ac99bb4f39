"""Retrying what the server could not serve *now*: UNAVAILABLE, with bounded backoff.

Inference is idempotent, so a request the server refused (queue full), lost (a python stub died:
the `<model>_guard` models answer UNAVAILABLE) or never saw (the server restarting: no
connection; or NOT_FOUND "... has no available versions" while it unloads its models) is simply
sent again, after 1, 2, 4, ... s (at most `max_backoff_s`), at most
`attempts` times in all. The first wait (1 s) outlasts `perceptserve serve`'s 0.5 s poll, so a
retry after a lost stub reaches the restarting server, not the one that lost it. Every other
status (INVALID_ARGUMENT, INTERNAL, ...) is raised at once. Each retry is announced through
`on_retry` (by default one line on standard error), so a CLI's progress output says why it waits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ClientError

T = TypeVar("T")
RETRYABLE = ("UNAVAILABLE",)
# What Triton 2.51 answers while a restarting server unloads its models (seen here): NOT_FOUND,
# but for a model that exists. A wrong model name reads "... is not found" and is not retried.
UNLOADING = ("NOT_FOUND", "has no available versions")


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RetryPolicy:
    """How our clients retry.

    Args:
        attempts: requests sent in all, the first included (1: never retry).
        first_backoff_s: the wait before the first retry; it doubles after each.
        max_backoff_s: the longest wait; with the defaults the waits add up to 1+2+4+8+16+30x4 = 151 s:
            bounded, and longer than a server restart here (stop, start, warm-up: over a minute for the
            test ViT on the loaded 2-core machine).
        on_retry: told "UNAVAILABLE (...): retrying in N s (attempt k of n)" before each wait.
    """

    attempts: int = 10
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    on_retry: Callable[[str], None] | None = stderr_line

    def backoff_s(self, retry: int) -> float:
        return min(self.first_backoff_s * 2**retry, self.max_backoff_s)

    def retryable(self, error: ClientError, attempt: int) -> bool:
        unloading = error.status == UNLOADING[0] and UNLOADING[1] in (error.message or "")
        return (error.status in RETRYABLE or unloading) and attempt + 1 < self.attempts

    def announce(self, error: ClientError, attempt: int) -> float:
        wait = self.backoff_s(attempt)
        if self.on_retry is not None:
            reason = error.message.splitlines()[0][:160] if error.message else ""
            attempt_text = f"attempt {attempt + 2} of {self.attempts}"
            self.on_retry(f"{error.status} ({reason}): retrying in {wait:g} s ({attempt_text})")
        return wait


DEFAULT = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def call(policy: RetryPolicy, send: Callable[[], T]) -> T:
    """`send()`, again after a retryable ClientError, as `policy` says."""
    for attempt in range(policy.attempts):
        try:
            return send()
        except ClientError as error:
            if not policy.retryable(error, attempt):
                raise
            time.sleep(policy.announce(error, attempt))
    raise AssertionError("unreachable: the last attempt raises")


async def call_async(policy: RetryPolicy, send: Callable[[], Awaitable[T]]) -> T:
    """`call` for asyncio clients: waits with `asyncio.sleep`."""
    for attempt in range(policy.attempts):
        try:
            return await send()
        except ClientError as error:
            if not policy.retryable(error, attempt):
                raise
            await asyncio.sleep(policy.announce(error, attempt))
    raise AssertionError("unreachable: the last attempt raises")


def from_retries(retries: int) -> RetryPolicy:
    """The default policy with `retries` resends (the CLIs' `--retries`; 0: none)."""
    return RetryPolicy(attempts=1 + max(0, retries))
