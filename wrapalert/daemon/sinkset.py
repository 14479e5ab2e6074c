"""The running sinks: one delivery worker per digest sink, one forwarder per event sink.

Built from a validated Config. State comes in through `restore` at startup
(the outbox rows and the mail cap's send times from the state database) and
through `take_over` at a reload (what the previous set's workers hand over):
the same records either way. A worker whose sink a reload removed, or that a
successor replaced, finishes what it has in flight and ends; the set keeps
its task so shutdown waits for it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import structlog

from wrapalert import sinks as sink_registry
from wrapalert.clock import Clock
from wrapalert.config import Config
from wrapalert.model import Digest, alert_test_report
from wrapalert.pipeline.deliver import MergeHook, ResultHook, SinkWorker, WorkerState
from wrapalert.pipeline.forward import ForwardWorker, scan_record
from wrapalert.scanrule import ScanSignal
from wrapalert.sinks.base import BanSink, DigestLook, EventSink, Sink
from wrapalert.story import held_story

log = structlog.get_logger()

ForwardHook = Callable[[str, int, Exception | None], None]
TEST_ALERT_BUDGET = 8.0  # seconds a test alert waits for the sinks: within the control timeout


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
        built: Iterable[Sink | EventSink] | None = None,
    ) -> None:
        self.workers: dict[str, SinkWorker] = {}
        self.forwarders: dict[str, ForwardWorker] = {}
        # Ban sinks (nftables) get no forwarder: the ban stage counts events, the ban
        # book (daemon/bans.py) calls them. At most one is used.
        self.banners: dict[str, BanSink] = {}
        backoff = (cfg.limits.retry_min, cfg.limits.retry_max)
        rates = {s.name: sink_registry.events_per_second(s) for s in cfg.sinks}
        if built is None:
            look, host = DigestLook(cfg.digest.template_dir, cfg.story.rule), cfg.daemon.hostname
            built = [sink_registry.build(s, look, host=host) for s in cfg.sinks]
        for sink in built:
            if isinstance(sink, BanSink):
                self.banners[sink.name] = sink
            elif isinstance(sink, EventSink):
                rate = rates.get(sink.name) or cfg.limits.events_per_second
                self.forwarders[sink.name] = ForwardWorker(
                    sink,
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
            else:
                self.workers[sink.name] = SinkWorker(
                    sink,
                    per_hour=cfg.limits.mails_per_hour,
                    on_result=on_result,
                    on_merge=on_merge,
                    clock=clock,
                    backoff=backoff,
                )
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def banner(self) -> BanSink | None:
        """The ban sink in force (the first configured), or None."""
        return next(iter(self.banners.values()), None)

    def start(self, tg: asyncio.TaskGroup) -> None:
        jobs = [(n, w.run()) for n, w in self.workers.items()]
        jobs += [(n, f.run()) for n, f in self.forwarders.items()]
        for name, job in jobs:
            self.tasks.append(tg.create_task(job, name=f"sink:{name}"))

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
        for name, worker in old.workers.items():
            if name in self.workers:
                self.workers[name].restore(worker.hand_over())
            else:  # removed: it delivers what the cap allows, then ends
                worker.close()
        for name, forwarder in old.forwarders.items():
            if name in self.forwarders:
                self.forwarders[name].restore(forwarder.hand_over())
            else:
                forwarder.close()
        self.tasks.extend(old.tasks)  # shutdown still waits for them
        retried = sum(w.retry_failed() for w in self.workers.values())
        if retried:
            log.info("retrying_failed_digests", count=retried)
        return retried

    def scan(self, found: ScanSignal) -> None:
        """A scan signal, as a record to each forwarding sink that reports scans (a sink
        with `takes_scans = True`); routes do not apply: it is about a source, not an event."""
        record = scan_record(found)
        for forwarder in self.forwarders.values():
            if getattr(forwarder.sink, "takes_scans", False):
                forwarder.offer_record(record)

    def close(self) -> None:
        """Let every worker deliver what it may, then end."""
        for worker in self.workers.values():
            worker.close()
        for forwarder in self.forwarders.values():
            forwarder.close()

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
        sinks: dict[str, dict[str, object]] = {
            name: {"queued": w.depth, "held_failed": len(w.failed), "last_error": w.last_error}
            for name, w in self.workers.items()
        }
        for name, f in self.forwarders.items():
            sinks[name] = {
                "queued": f.queued,
                "held": f.held,
                "held_untrusted": f.held_untrusted.events,
                "held_failed": 0,
                "last_error": f.last_error,
            }
        return sinks

    async def test_alert(self, host: str, now: float) -> dict[str, str]:
        """A test notification to every sink now, past routes and rate limits: per sink,
        "delivered" or why not. It reports no events, so no count changes. The ban sink
        is the ban book's to answer (daemon/bans.py: is every ban in the kernel)."""
        digest = Digest(host, now, (alert_test_report(now),))
        record: dict[str, object] = {
            "type": "event",
            "received": round(now, 6),
            "daemon": "wrapalert-test",
            "client_addr": "192.0.2.0",  # TEST-NET-1 (RFC 5737): no real source
            "client_name": "wrapalert-test-alert",
            "verdict": "deny",
            "host": host,
            "trusted": True,
            "uid": os.getuid(),
            "test": True,
        }
        sends: dict[str, Awaitable[None]] = {
            name: w.sink.send(digest) for name, w in self.workers.items()
        }
        sends |= {name: f.sink.send_records([record]) for name, f in self.forwarders.items()}
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
