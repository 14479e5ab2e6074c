"""Digests on time: sleep until the next group falls due, then dispatch.

The scheduler sleeps on the injected clock until the aggregator's earliest
timer (woken early by `wake` when a new group may be due sooner), collects
the due groups and makes one digest per digest sink (the groups routed to
it). The digests are committed to the outbox, together with the groups'
reset, before any sink sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.sinkset import SinkSet
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.model import Digest, GroupReport, fold_reports
from wrapalert.pipeline.chain import EventPipeline

log = structlog.get_logger()


class Scheduler:
    """Owns the digest timer; `run` is its task, `dispatch` also serves flush and shutdown."""

    def __init__(
        self,
        *,
        host: str,
        clock: Clock,
        stats: Stats,
        store: Store,
        commit: Callable[[], bool],
        current: Callable[[], tuple[EventPipeline, SinkSet]],
        banned: Callable[[], tuple[tuple[str, str, str, float], ...]] = tuple,
    ) -> None:
        self.host = host
        self.clock = clock
        self.stats = stats
        self.store = store
        self.commit = commit
        self.current = current  # the pipeline and sinks in force: a reload replaces them
        self.banned = banned  # the ban notes since the last digest (daemon/bans.py)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A group may be due sooner than the timer the scheduler sleeps on."""
        self._wake.set()

    async def run(self) -> None:
        clock = self.clock
        while True:
            due = self.current()[0].aggregator.next_due()
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
        pipeline, _ = self.current()
        reason = "manual flush" if why == "flush" else "shutdown flush"
        reports = pipeline.aggregator.collect(self.clock.now(), force=force, reason=reason)
        self.dispatch(reports, why)
        return reports

    def dispatch(self, reports: list[GroupReport], why: str) -> None:
        """Make each sink's digest (the groups routed to it), commit them to the outbox
        together with the groups' reset, then queue them."""
        if not reports:
            return
        pipeline, sinks = self.current()
        created, silenced = self.clock.now(), pipeline.mute.take_silenced()
        banned = self.banned()
        self.stats.digests += 1
        # A group routed only to sinks that no longer exist (a reload) goes everywhere.
        names = set(sinks.workers)
        everywhere = [r for r in reports if r.sinks is None or names.isdisjoint(r.sinks)]
        queued = []
        for name, worker in sinks.workers.items():
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
