"""Time, injected: every part of the daemon asks one `Clock` for `now`, `sleep` and
`timeout`, so timing logic runs on a virtual clock in tests (tests/clock.py).

`now` is wall-clock time (it is written into events, digests and the state
database); `sleep` and `timeout` are the event loop's, which tests replace by
a loop whose time jumps ahead whenever the loop is idle.
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
