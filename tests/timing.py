"""The tests' clocks: a manual one for single parts, and virtual time on an event loop
that jumps ahead when idle, for the running daemon.

`ManualClock` is for one part on its own (a sink worker): its `sleep`
advances `t` at once and yields, and a test may move `t` itself.

`run(coro)` runs a coroutine on a `VirtualTimeLoop`: whenever the loop has
nothing ready to run (after `IDLE` real seconds, 0 by default) and no job
in an executor thread, its clock jumps to the next timer (trio's autojump
clock, for asyncio). `asyncio.sleep(3600)` then takes
milliseconds, and timers fire in the order and at the virtual times they
would for real. Real I/O still wakes the loop as usual. Work in another
process is invisible to the loop, so time may jump while it runs: tests that
mix virtual time with slow real work send their events from inside the loop
(a datagram is instant), not from a subprocess.

`VirtualClock` is the daemon's `Clock` on that loop: wall time is a fixed
epoch plus the loop's time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

T = TypeVar("T")

IDLE = 0.0  # real seconds of idleness before virtual time jumps (0: at once)
EPOCH = 1_700_000_000.0


class _JumpingSelector:
    """Wraps the loop's selector: a wait that finds nothing after IDLE jumps time."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None or timeout <= IDLE or self._loop.in_threads:
            # Work in a thread (a sink's file write, a name lookup) ends on the real
            # clock: wait for it as a real loop would, or time would race past it.
            return self._selector.select(timeout)
        ready = self._selector.select(IDLE)
        if not ready:
            self._loop.offset += timeout - IDLE  # the next timer is due now
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop whose `time()` starts at 0 and runs ahead of real time by `offset`."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.in_threads = 0  # executor jobs under way: time does not jump past them
        self._start = super().time()
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type,arg-type]

    def time(self) -> float:
        return super().time() - self._start + self.offset

    # Counts the job, then asyncio's own (typeshed's generic signature, loosened).
    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:  # type: ignore[override]
        future = super().run_in_executor(executor, func, *args)
        self.in_threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.in_threads -= 1

    async def shutdown_default_executor(self, *args: Any) -> None:
        """Counts as a thread job too: Python 3.12+ joins the executor's threads under a
        timeout (asyncio.run's is 300 s) that virtual time would reach at once, with "The
        executor did not finishing joining its threads" and threads left running."""
        self.in_threads += 1
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self.in_threads -= 1


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on virtual time."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


class VirtualClock:
    """The daemon's Clock on the running loop's time; records every sleep it is asked for.

    Wall time starts at `epoch` and goes on from where it was when the same clock is
    used on a new loop (a daemon restarted in a second `run`): time never goes back."""

    def __init__(self, epoch: float = EPOCH) -> None:
        self.last = epoch
        self.sleeps: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._base = epoch

    def now(self) -> float:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made before the loop runs
            return self.last
        if loop is not self._loop:
            self._loop, self._base = loop, self.last - loop.time()
        self.last = self._base + loop.time()
        return self.last

    @property
    def t(self) -> float:
        return self.now()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


class ManualClock:
    """A Clock whose `sleep` advances `t` at once (and yields); tests may set `t`."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        # Only the running daemon's scheduler waits with a timeout: on virtual time.
        raise NotImplementedError("use VirtualClock for timeouts")
