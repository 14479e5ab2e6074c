"""The running sinks: one delivery worker per digest sink, one forwarder per record sink,
the ban sink the ban book calls, and which of them take the daemon's notices.

Built from a validated Config; each sink's descriptor (sinks/registry.py) says
what it takes, and that alone decides its worker. Every worker follows one
protocol (pipeline/worker.py), so each concern below is one loop. State comes
in through `restore` at startup (the outbox rows and the mail cap's send times
from the state database) and through `take_over` at a reload (what the
previous set's workers hand over): the same records either way. A worker whose
sink a reload removed, or that a successor replaced, finishes what it has in
flight and ends; the set keeps its task so shutdown waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar, cast

import structlog

from wrapalert.clock import Clock
from wrapalert.config import Config
from wrapalert.daemon.control import TEST_ALERT_BUDGET
from wrapalert.pipeline.deliver import MergeHook, ResultHook, SinkWorker, WorkerState
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.worker import Worker
from wrapalert.sinks import registry as sink_registry
from wrapalert.sinks.base import BanSink, Built, DigestLook, EventSink, NoticeSink, Sink
from wrapalert.story import held_story

log = structlog.get_logger()

ForwardHook = Callable[[str, int, Exception | None], None]
W = TypeVar("W", SinkWorker, ForwardWorker)


class SinkSet:
    """Workers and forwarders by sink name; `start` runs them in a TaskGroup."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock,
        on_result: ResultHook,
        on_merge: MergeHook,
        on_forwarded: ForwardHook,
        built: Iterable[Built] | None = None,
    ) -> None:
        self.workers: dict[str, SinkWorker] = {}
        self.forwarders: dict[str, ForwardWorker] = {}
        # Ban sinks (nftables) get no worker: the ban stage counts events, the ban book
        # (daemon/bans.py) calls them. At most one is used.
        self.banners: dict[str, BanSink] = {}
        self.scan_takers: tuple[ForwardWorker, ...] = ()  # forwarders taking "scan" records
        # Sinks that take the daemon's notices (daemon/notices.py): digest sinks by name,
        # each sent a notice at once; forwarders, offered "hook" records.
        self.noticers: dict[str, NoticeSink] = {}
        self.notice_forwarders: tuple[ForwardWorker, ...] = ()
        backoff = (cfg.limits.retry_min, cfg.limits.retry_max)
        rates = {s.name: sink_registry.events_per_second(s) for s in cfg.sinks}
        if built is None:
            look, host = DigestLook(cfg.digest.template_dir, cfg.story.rule), cfg.daemon.hostname
            built = [sink_registry.built(s, look, host=host) for s in cfg.sinks]
        # The descriptor vouches for the sink's interface: hence the casts.
        for entry in built:
            name, takes = entry.sink.name, entry.takes
            if takes.bans:
                self.banners[name] = cast("BanSink", entry.sink)
            elif takes.records:
                rate = rates.get(name) or cfg.limits.events_per_second
                forwarder = ForwardWorker(
                    cast("EventSink", entry.sink),
                    on_result=on_forwarded,
                    per_second=rate,
                    # Never more than the sink's own rate: the untrusted budget is the smaller.
                    untrusted_per_second=min(rate, cfg.limits.untrusted_events_per_second),
                    clock=clock,
                    backoff=backoff,
                    describe_held=partial(
                        held_story, scan=cfg.scan.rule, brute_force=cfg.story.brute_force
                    ),
                )
                self.forwarders[name] = forwarder
                if takes.scans:
                    self.scan_takers = (*self.scan_takers, forwarder)
                if takes.notices:
                    self.notice_forwarders = (*self.notice_forwarders, forwarder)
            elif takes.digests:
                self.workers[name] = SinkWorker(
                    cast("Sink", entry.sink),
                    per_hour=cfg.limits.mails_per_hour,
                    on_result=on_result,
                    on_merge=on_merge,
                    clock=clock,
                    backoff=backoff,
                )
                if takes.notices:
                    self.noticers[name] = cast("NoticeSink", entry.sink)
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def banner(self) -> BanSink | None:
        """The ban sink in force (the first configured), or None."""
        return next(iter(self.banners.values()), None)

    def every(self) -> Iterator[Worker[Any]]:
        """Every worker, digest ones first."""
        yield from self.workers.values()
        yield from self.forwarders.values()

    def start(self, tg: asyncio.TaskGroup) -> None:
        self.tasks.extend(worker.start(tg) for worker in self.every())

    def restore(self, states: dict[str, WorkerState]) -> None:
        """Give each digest worker its saved state (at start). A sink no longer configured
        keeps its digests in the outbox, for a config that brings it back."""
        for name, state in states.items():
            worker = self.workers.get(name)
            if worker is not None:
                worker.restore(state)
            elif state.queue or state.failed:
                log.warning(
                    "outbox_orphaned",
                    sink=name,
                    digests=len(state.queue) + len(state.failed),
                    hint="that sink is no longer configured; it stays in the outbox",
                )

    def take_over(self, old: SinkSet) -> int:
        """Take what `old`'s workers hold, sink by sink; end the rest of `old` (each
        finishes what it has in flight). Failed digests are tried again: a reload is how
        an admin says the sink is fixed. Returns how many were put back."""
        _take_over(self.workers, old.workers)
        _take_over(self.forwarders, old.forwarders)
        self.tasks.extend(old.tasks)  # shutdown still waits for them
        retried = sum(w.retry_failed() for w in self.workers.values())
        if retried:
            log.info("retrying_failed_digests", count=retried)
        return retried

    def close(self) -> None:
        """Let every worker deliver what it may, then end."""
        for worker in self.every():
            worker.close()

    async def wait(self, grace: float) -> None:
        """Give every worker (retired ones too) `grace` seconds to finish, then cancel."""
        if not self.tasks:
            return
        _, late = await asyncio.wait(self.tasks, timeout=grace)
        for task in late:
            log.warning(
                "sink_shutdown_timeout",
                task=task.get_name(),
                hint="its digests stay in the outbox for the next start",
            )
            task.cancel()

    @property
    def outbox(self) -> int:
        return sum(w.depth + len(w.failed) for w in self.workers.values())

    def status(self) -> dict[str, dict[str, object]]:
        return {worker.name: worker.status() for worker in self.every()}

    async def test_alert(self, host: str, now: float) -> dict[str, str]:
        """A test notification to every sink now, past routes and rate limits: per sink,
        "delivered" or why not. It reports no events, so no count changes. The ban sink
        is the ban book's to answer (daemon/bans.py: is every ban in the kernel)."""
        sends: dict[str, Awaitable[None]] = {w.name: w.send_test(host, now) for w in self.every()}
        tasks = {asyncio.ensure_future(job): name for name, job in sends.items()}
        results: dict[str, str] = {}
        if tasks:
            try:
                done, pending = await asyncio.wait(tasks, timeout=TEST_ALERT_BUDGET)
            finally:  # also when the daemon stops meanwhile: no send outlives the request
                for task in tasks:
                    task.cancel()
            for task in pending:
                results[tasks[task]] = f"no answer within {TEST_ALERT_BUDGET:g}s"
            for task in done:
                error = task.exception()
                results[tasks[task]] = "delivered" if error is None else f"failed: {error}"
        log.info("test_alert", **results)
        return dict(sorted(results.items()))


def _take_over(new: dict[str, W], old: dict[str, W]) -> None:
    """Each of `old`'s workers hands its state to its successor of the same name, or ends."""
    for name, worker in old.items():
        successor = new.get(name)
        if successor is None:  # removed: it delivers what the cap allows, then ends
            worker.close()
        else:
            successor.restore(worker.hand_over())
