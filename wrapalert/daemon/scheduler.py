"""Digests on time: sleep until the next group falls due, then dispatch.

The scheduler sleeps on the injected clock until the aggregator's earliest
timer (woken early by `wake` when a new group may be due sooner), collects
the due groups and makes one digest per digest sink (the groups routed to
it). The digests are committed to the outbox, together with the groups'
reset, before any sink sees them.

Config-scoped: each runtime (daemon/runtime.py) has its own, for its own
aggregator and digest workers; a reload starts the new one and retires the old.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.model import BanNote, Digest, GroupReport, fold_reports
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.deliver import SinkWorker

log = structlog.get_logger()


class Silenced(Protocol):
    """The silence book's count for the digest (daemon/silences.py)."""

    def take_silenced(self) -> int: ...


class BanNotes(Protocol):
    """The ban book's news for the digest (daemon/bans.py)."""

    def take_notes(self) -> tuple[BanNote, ...]: ...


class Scheduler:
    """Owns the digest timer; `run` is its task, `collect` also serves flush and shutdown."""

    def __init__(
        self,
        *,
        host: str,
        clock: Clock,
        stats: Stats,
        store: Store,
        commit: Callable[[], bool],
        aggregator: Aggregator,
        workers: Mapping[str, SinkWorker],
        silenced: Silenced,
        bans: BanNotes,
    ) -> None:
        self.host = host
        self.clock = clock
        self.stats = stats
        self.store = store
        self.commit = commit
        self.aggregator = aggregator
        self.workers = workers  # the digest sinks' workers, by name
        self.silenced = silenced
        self.bans = bans
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A group may be due sooner than the timer the scheduler sleeps on."""
        self._wake.set()

    def start(self, tg: asyncio.TaskGroup) -> None:
        self.task = tg.create_task(self.run(), name="scheduler")

    def retire(self) -> None:
        """Stop the timer (a reload's successor, or shutdown, takes over)."""
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        clock = self.clock
        while True:
            due = self.aggregator.next_due()
            delay = None if due is None else due - clock.now()
            if delay is None or delay > 0:
                # Not wait_for: on 3.11 it can swallow a cancel that meets a wake-up, and
                # shutdown then waits for this task forever.
                with contextlib.suppress(TimeoutError):
                    async with clock.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            self.collect(force=False, why="due")

    def collect(self, *, force: bool, why: str) -> list[GroupReport]:
        """Dispatch what is due (with `force`, every group with news: `why` "flush" is
        `wrapalert flush`, anything else the shutdown); the reports."""
        reason = "manual flush" if why == "flush" else "shutdown flush"
        reports = self.aggregator.collect(self.clock.now(), force=force, reason=reason)
        self.dispatch(reports, why)
        return reports

    def dispatch(self, reports: list[GroupReport], why: str) -> None:
        """Make each sink's digest (the groups routed to it), commit them to the outbox
        together with the groups' reset, then queue them."""
        if not reports:
            return
        created, silenced = self.clock.now(), self.silenced.take_silenced()
        banned = self.bans.take_notes()
        self.stats.digests += 1
        # A group routed only to sinks that no longer exist (a reload) goes everywhere.
        names = set(self.workers)
        everywhere = [r for r in reports if r.sinks is None or names.isdisjoint(r.sinks)]
        queued = []
        for name, worker in self.workers.items():
            mine = everywhere + [r for r in reports if r.sinks is not None and name in r.sinks]
            if not mine:
                continue
            digest = Digest(
                host=self.host,
                created=created,
                groups=tuple(fold_reports(mine)),
                silenced=silenced,
                banned=banned,
            )
            self.store.stage_enqueue(name, digest)
            queued.append((worker, digest))
            log.info(
                "digest",
                digest=digest.id,
                sink=name,
                events=digest.events,
                groups=len(digest.groups),
                severity=digest.severity,
                why=why,
            )
        self.commit()
        for worker, digest in queued:
            worker.submit(digest)
