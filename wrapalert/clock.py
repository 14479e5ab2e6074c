"""Time, from here only: every part of the daemon asks one `Clock` for `now`, `sleep`
and `timeout`, so timing logic runs on a virtual clock in tests (tests/timing.py).

`now` is wall-clock time (it is written into events, digests and the state
database); `sleep` and `timeout` are the event loop's, which tests replace by
a loop whose time jumps ahead whenever the loop is idle.

Two readings are the kernel's and never virtual, and live here too so that no
other module in daemon/, pipeline/ or sinks/ reads a clock of its own (a test,
tests/test_layering.py, holds them to it): `wall`, for what is compared with the
kernel's own timestamps (spool files' mtimes, Maildir file names), and
`monotonic_usec`, which sd_notify's RELOADING message must carry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    """What the daemon's parts know of time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]: ...


class SystemClock:
    """The real clock: time.time() and the running loop's sleep and timeout."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now  # a test may pin the wall clock and keep the loop's timers

    def now(self) -> float:
        return self._now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


SYSTEM = SystemClock()


def wall() -> float:
    """The kernel's wall clock: for what the kernel itself stamps (file times)."""
    return time.time()


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds (sd_notify's MONOTONIC_USEC)."""
    return time.monotonic_ns() // 1000
