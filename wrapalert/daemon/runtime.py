"""The runtime: everything one Config builds, and that a reload replaces whole.

A `Runtime` is the sinks (daemon/sinkset.py), the event pipeline with its
aggregator (pipeline/chain.py), the digest scheduler (daemon/scheduler.py), the
fleet's ban sharing (daemon/fleet.py) and the alertmanager sinks' heartbeats
(daemon/heartbeat.py) for one Config. The long-lived parts it reports to (the ledger, the silence
book, the ban book, the state database) outlive it: `RuntimeBuilder` is given
them once and builds each runtime around them. Building reads the previous
runtime's state (groups as plain data, the ban and scan stages' memories) but
changes nothing of it, so a build that fails leaves the old runtime running;
the swap itself is the reloader's (daemon/reload.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wrapalert.clock import Clock
from wrapalert.config import Config
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.fleet import Fleet, FleetSettings
from wrapalert.daemon.heartbeat import Heartbeat
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.scheduler import Scheduler
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.sinkset import SinkSet
from wrapalert.pipeline import chain
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.ban import BanStage
from wrapalert.pipeline.deliver import WorkerState
from wrapalert.sinks.alertmanager import AlertmanagerSinkConfig
from wrapalert.sinks.base import Built


@dataclass(frozen=True)
class Runtime:
    """The config-scoped parts, built together from `cfg`."""

    cfg: Config
    sinks: SinkSet
    pipeline: chain.EventPipeline
    scheduler: Scheduler
    fleet: Fleet | None = None  # with an nftables sink's `fleet`
    heartbeats: tuple[Heartbeat, ...] = ()  # one per alertmanager sink with `heartbeat`

    @property
    def aggregator(self) -> Aggregator:
        return self.pipeline.aggregator

    def restore(self, groups: list[dict[str, Any]], outbox: dict[str, WorkerState]) -> None:
        """The state the database kept (at start): the groups and each sink's outbox."""
        self.aggregator.restore(groups)
        self.sinks.restore(outbox)

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Run its tasks: every sink's worker, the digest timer, the fleet, heartbeats."""
        self.sinks.start(tg)
        self.scheduler.start(tg)
        for part in self._timed():
            part.start(tg)

    def retire(self) -> None:
        """Stop its timers (a reload's successor takes over; the workers hand over)."""
        self.scheduler.retire()
        for part in self._timed():
            part.retire()

    def _timed(self) -> tuple[Fleet | Heartbeat, ...]:
        return (*((self.fleet,) if self.fleet is not None else ()), *self.heartbeats)

    def status(self) -> dict[str, object]:
        """Status' `fleet` and `heartbeat` objects (None: not configured)."""
        beats = {h.name: h.status() for h in self.heartbeats}
        return {
            "fleet": self.fleet.status() if self.fleet is not None else None,
            "heartbeat": beats or None,
        }

    async def stop(self, grace: float) -> None:
        """At shutdown: every group with news goes out, then the sinks get `grace`
        seconds (what is still undelivered stays in the outbox)."""
        self.retire()
        self.scheduler.collect(force=True, why="shutdown")
        self.sinks.close()
        await self.sinks.wait(grace)


class RuntimeBuilder:
    """Builds runtimes around the long-lived parts it is given once."""

    def __init__(self, *, clock: Clock, ledger: Ledger, silences: Silences, bans: Bans) -> None:
        self.clock = clock
        self.ledger = ledger
        self.silences = silences
        self.bans = bans

    def build(
        self,
        cfg: Config,
        *,
        previous: Runtime | None = None,
        built: Iterable[Built] | None = None,
    ) -> Runtime:
        """A runtime for `cfg`, starting from `previous`'s groups (a reload); `built`:
        sinks already made (a test's), else each `[[sink]]` is built here."""
        ledger = self.ledger
        sinks = SinkSet(
            cfg,
            clock=self.clock,
            on_result=ledger.delivered,
            on_merge=ledger.merged,
            on_forwarded=ledger.forwarded,
            built=built,
        )
        aggregator = Aggregator(
            cfg.digest,
            cfg.limits.max_groups,
            cfg.limits.untrusted_interval,
            changes=ledger.groups,
        )
        if previous is not None:
            aggregator.restore(previous.aggregator.export_all())
        scheduler = Scheduler(
            host=cfg.daemon.hostname,
            clock=self.clock,
            stats=ledger.stats,
            store=ledger.store,
            commit=ledger.commit,
            aggregator=aggregator,
            workers=sinks.workers,
            silenced=self.silences,
            bans=self.bans,
        )
        banner = sinks.banner
        ban = None
        if banner is not None:
            scan_rule = cfg.scan.rule if cfg.scan.enabled else None
            # The book's own `settled`: the stage reads it, the book writes it.
            ban = BanStage(banner.rule, self.bans.policy.settled, self.bans.request, scan_rule)
        pipeline = chain.build(
            cfg,
            aggregator=aggregator,
            on_due=scheduler.wake,
            silences=self.silences,
            books=ledger,
            forwarders=sinks.forwarders,
            scan_takers=sinks.scan_takers,
            ban=ban,
            previous=previous.pipeline if previous is not None else None,
        )
        host = cfg.daemon.hostname
        fleet_settings = FleetSettings.of(cfg)
        fleet = None
        if fleet_settings is not None:
            fleet = Fleet(
                fleet_settings, bans=self.bans, host=host, clock=self.clock, stats=ledger.stats
            )
        heartbeats = tuple(
            Heartbeat(s, host=host, clock=self.clock)
            for s in cfg.sinks
            if isinstance(s, AlertmanagerSinkConfig) and s.heartbeat > 0
        )
        return Runtime(cfg, sinks, pipeline, scheduler, fleet, heartbeats)
