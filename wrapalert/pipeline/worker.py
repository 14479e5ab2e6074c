"""The worker protocol: what the sink set (daemon/sinkset.py) asks of each sink's
worker, whether it delivers digests (pipeline/deliver.py) or forwards records
(pipeline/forward.py).

A worker owns one sink and runs as one task. Its state moves one way, as plain
data: `hand_over` gives it to a successor (a reload), which `restore`s it; the
state database keeps the same shapes. `close` lets it deliver what it may and
end; `status` is its line in `wrapalert status`; `send_test` is `test-alert`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar

StateT = TypeVar("StateT")


class Worker(Protocol[StateT]):
    """One sink's worker; `StateT` is what it hands over and restores."""

    @property
    def name(self) -> str: ...

    def start(self, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
        """Run it as a task of `tg`."""
        ...

    def close(self) -> None:
        """Deliver what it may, then end."""
        ...

    def hand_over(self) -> StateT:
        """Give up its state to a successor and end (what is in flight still goes)."""
        ...

    def restore(self, state: StateT) -> None:
        """Take over a predecessor's state (a reload) or the saved one (a start)."""
        ...

    def status(self) -> dict[str, object]:
        """Its entries in `wrapalert status`'s sinks object."""
        ...

    async def send_test(self, host: str, now: float) -> None:
        """A test notification straight to the sink (`wrapalert test-alert`)."""
        ...
