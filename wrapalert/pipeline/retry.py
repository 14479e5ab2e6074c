"""Retry with backoff: the one loop every sink worker uses (mail digests and records).

A transient failure (`TransientSinkError`) is retried after a capped,
jittered exponential pause on the injected clock; anything else goes to the
caller. Once `closed` is set (shutdown, or a reload retiring the worker) a
pause ends at once and the next transient failure is raised instead of
retried, so no retry outlives its worker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from wrapalert.clock import Clock
from wrapalert.sinks.base import TransientSinkError

RetryHook = Callable[[TransientSinkError, float], None]


class Backoff:
    """Pauses of `first`, doubling up to `cap`, each jittered down by at most half."""

    def __init__(
        self, first: float, cap: float, jitter: Callable[[], float] = random.random
    ) -> None:
        self.first, self.cap, self.jitter = first, cap, jitter

    def pauses(self) -> Callable[[], float]:
        """A fresh sequence of pauses, one per failed attempt."""
        delay = self.first

        def following() -> float:
            nonlocal delay
            pause = delay * (0.5 + self.jitter() / 2)  # jitter spreads retries from many hosts
            delay = min(delay * 2, self.cap)
            return pause

        return following


async def pause(clock: Clock, seconds: float, wake: asyncio.Event) -> None:
    """Sleep on the clock; `wake` (set, or being set) ends the pause early."""
    if wake.is_set():
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()


async def retry(
    attempt: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    clock: Clock,
    closed: asyncio.Event,
    on_retry: RetryHook | None = None,
) -> None:
    """Await `attempt()` until it succeeds; transient errors are retried while open."""
    following = backoff.pauses()
    while True:
        try:
            await attempt()
        except TransientSinkError as exc:
            if closed.is_set():
                raise
            seconds = following()
            if on_retry is not None:
                on_retry(exc, seconds)
            await pause(clock, seconds, closed)
        else:
            return
