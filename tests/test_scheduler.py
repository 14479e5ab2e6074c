"""daemon/scheduler.py alone: when digests go out, which sink gets which groups, and
that the outbox holds a digest before its sink does; a real pipeline, real sink workers
and a real state database, with recording sinks, on a manual clock or virtual time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import Mailbox, event, make_config
from timing import ManualClock, VirtualClock, run

from wrapalert.config import RouteConfig
from wrapalert.daemon.scheduler import Scheduler
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.sinkset import SinkSet
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.match import Selector
from wrapalert.model import BanNote, Digest
from wrapalert.pipeline import chain
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.scanrule import ScanSignal
from wrapalert.sinks.base import DIGESTS, Built

GROUP_WAIT = 10.0
SLACK = 0.05  # real seconds that pass while the virtual clock stands


def ignore(*_args: object) -> None:
    """A hook whose calls this test does not look at."""


class Counts:
    """The books the pipeline's stages count into (daemon/ledger.py's Ledger), kept."""

    def __init__(self) -> None:
        self.mutes: list[str] = []
        self.scans: list[ScanSignal] = []

    def muted(self, why: str) -> None:
        self.mutes.append(why)

    def scan_found(self, found: ScanSignal) -> None:
        self.scans.append(found)


class Notes:
    """The ban book's news for the next digest (daemon/bans.py), given once."""

    def __init__(self, notes: tuple[BanNote, ...]) -> None:
        self.notes = notes

    def take_notes(self) -> tuple[BanNote, ...]:
        notes, self.notes = self.notes, ()
        return notes


class Parts:
    """A scheduler and what it works on, wired as daemon/runtime.py wires them: the
    pipeline wakes the scheduler, which collects from the same aggregator for the same
    sink workers."""

    def __init__(
        self,
        base: Path,
        clock: ManualClock | VirtualClock,
        *mailboxes: Mailbox,
        routes: tuple[RouteConfig, ...] = (),
        banned: tuple[BanNote, ...] = (),
    ) -> None:
        cfg = make_config(base, group_wait=GROUP_WAIT, group_interval=300.0, batch_window=0.0)
        cfg = replace(cfg, routes=routes)
        self.store = Store(base / "state", clock.now)
        self.store.open()
        self.stats = Stats()
        self.sinks = SinkSet(
            cfg,
            clock=clock,
            on_result=ignore,
            on_merge=ignore,
            on_forwarded=ignore,
            built=[Built(m, DIGESTS) for m in mailboxes],
        )
        self.silences = Silences(self.store, clock)
        aggregator = Aggregator(cfg.digest, cfg.limits.max_groups)
        self.scheduler = Scheduler(
            host="web1",
            clock=clock,
            stats=self.stats,
            store=self.store,
            commit=self.store.commit,
            aggregator=aggregator,
            workers=self.sinks.workers,
            silenced=self.silences,
            bans=Notes(banned),
        )
        self.pipeline = chain.build(
            cfg,
            aggregator=aggregator,
            on_due=self.scheduler.wake,
            silences=self.silences,
            books=Counts(),
            forwarders={},
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The sink workers and the scheduler's loop run, as in the daemon, until the
        block ends."""
        async with asyncio.TaskGroup() as tg:
            self.sinks.start(tg)
            timer = tg.create_task(self.scheduler.run())
            yield
            timer.cancel()
            self.sinks.close()

    def queued(self, sink: str) -> list[Digest]:
        """What the scheduler handed `sink`'s worker (a worker that does not run)."""
        return list(self.sinks.workers[sink].queue)


def addrs(digest: Digest) -> list[str]:
    return sorted(g.label("client_addr") or "" for g in digest.groups)


def outbox(base: Path) -> list[tuple[str, str]]:
    """(sink, digest id) of each outbox row committed in `base`, read independently."""
    store = Store(base / "state")
    store.open()
    try:
        return [(row.sink, row.digest.id) for row in store.load().outbox]
    finally:
        store.close()


# -- on time --------------------------------------------------------------------------


def test_a_new_groups_digest_goes_out_group_wait_after_its_first_event(sockdir: Path) -> None:
    """The scheduler sleeps until the group is due, then dispatches one digest holding
    every event that came meanwhile."""
    clock = VirtualClock()
    mail = Mailbox(clock)
    p = Parts(sockdir, clock, mail)

    async def scenario() -> float:
        start = clock.now()
        async with p.running():
            p.pipeline.accept(event(at=clock.now()))
            await asyncio.sleep(4.0)
            p.pipeline.accept(event(at=clock.now()))
            await mail.wait(1, within=60.0)
        return start

    start = run(scenario())
    ((at, digest),) = mail.got
    assert at - start == pytest.approx(GROUP_WAIT, abs=SLACK)
    assert digest.events == 2


def test_an_idle_scheduler_wakes_for_a_group_added_later(sockdir: Path) -> None:
    """With no group it sleeps without a timer; the first event wakes it, and that group
    still goes out exactly group_wait after it."""
    clock = VirtualClock()
    mail = Mailbox(clock)
    p = Parts(sockdir, clock, mail)

    async def scenario() -> float:
        clock.now()  # virtual wall time starts here, not at its first reading
        async with p.running():
            await asyncio.sleep(1000.0)  # nothing to wait for: no timer at all
            first = clock.now()
            p.pipeline.accept(event(at=first))
            await mail.wait(1, within=60.0)
        return first

    first = run(scenario())
    ((at, _),) = mail.got
    assert at - first == pytest.approx(GROUP_WAIT, abs=SLACK)


def test_nothing_due_dispatches_nothing(tmp_path: Path) -> None:
    """Before any group is due a pass sends no digest, counts none and writes no outbox
    row."""
    clock = ManualClock(1_000.0)
    p = Parts(tmp_path, clock, Mailbox(clock))
    p.pipeline.accept(event(at=clock.now()))
    clock.t += GROUP_WAIT - 1
    assert p.scheduler.collect(force=False, why="due") == []
    assert (p.queued("mail"), p.stats.digests, outbox(tmp_path)) == ([], 0, [])


def test_a_flush_sends_every_group_with_news_before_it_is_due(tmp_path: Path) -> None:
    """`wrapalert flush` (force) reports a group at once, as a manual flush."""
    clock = ManualClock(1_000.0)
    p = Parts(tmp_path, clock, Mailbox(clock))
    p.pipeline.accept(event(at=clock.now()))
    (report,) = p.scheduler.collect(force=True, why="flush")
    assert report.reason == "manual flush"
    (digest,) = p.queued("mail")
    assert digest.groups[0].reason == "manual flush"


def test_the_shutdown_flush_says_so(tmp_path: Path) -> None:
    """What shutdown forces out is marked as the shutdown flush."""
    clock = ManualClock(1_000.0)
    p = Parts(tmp_path, clock, Mailbox(clock))
    p.pipeline.accept(event(at=clock.now()))
    (report,) = p.scheduler.collect(force=True, why="shutdown")
    assert report.reason == "shutdown flush"


# -- which sink gets what ---------------------------------------------------------------


def test_each_sink_gets_one_digest_of_the_groups_routed_to_it(tmp_path: Path) -> None:
    """Routed groups go to their sinks only, unrouted ones to every sink: one digest per
    sink, and the dispatch counts once."""
    clock = ManualClock(1_000.0)
    routes = (RouteConfig(Selector.parse(["client=198.51.100.0/24"]), "critical", ("ops",)),)
    p = Parts(tmp_path, clock, Mailbox(clock, "mail"), Mailbox(clock, "ops"), routes=routes)
    p.pipeline.accept(event(addr="198.51.100.9", at=clock.now()))
    p.pipeline.accept(event(addr="192.0.2.1", at=clock.now()))
    clock.t += GROUP_WAIT
    p.scheduler.collect(force=False, why="due")
    ((mail,), (ops,)) = p.queued("mail"), p.queued("ops")
    assert addrs(mail) == ["192.0.2.1"]
    assert addrs(ops) == ["192.0.2.1", "198.51.100.9"]
    assert ops.severity == "critical"
    assert p.stats.digests == 1


def test_a_group_routed_to_a_sink_no_longer_there_goes_to_every_sink(tmp_path: Path) -> None:
    """After a reload removed a route's sink, its groups are not lost: every sink gets them."""
    clock = ManualClock(1_000.0)
    routes = (RouteConfig(Selector.parse(["daemon=sshd"]), "warning", ("gone",)),)
    p = Parts(tmp_path, clock, Mailbox(clock, "mail"), Mailbox(clock, "ops"), routes=routes)
    p.pipeline.accept(event(at=clock.now()))
    clock.t += GROUP_WAIT
    p.scheduler.collect(force=False, why="due")
    assert [addrs(d) for d in p.queued("mail") + p.queued("ops")] == [["192.0.2.1"]] * 2


def test_a_digest_carries_the_host_the_silenced_count_and_the_ban_notes(tmp_path: Path) -> None:
    """The digest names the scheduler's host, says how many events silences hid since
    the last one (then counts from zero) and carries the ban notes it is given."""
    clock = ManualClock(1_000.0)
    notes = (BanNote("banned", "203.0.113.7", "scan", 1_000.0),)
    p = Parts(tmp_path, clock, Mailbox(clock), banned=notes)
    p.silences.silenced = 3  # what the silence book counted since the last digest
    p.pipeline.accept(event(at=clock.now()))
    p.scheduler.collect(force=True, why="flush")
    (digest,) = p.queued("mail")
    assert (digest.host, digest.silenced, digest.banned) == ("web1", 3, notes)
    assert p.silences.silenced == 0


# -- the outbox first ---------------------------------------------------------------------


class OutboxReader(Mailbox):
    """A sink that, when sent a digest, reads the outbox from the database first."""

    def __init__(self, clock: VirtualClock, base: Path) -> None:
        super().__init__(clock)
        self.base = base
        self.found: list[bool] = []

    async def send(self, digest: Digest) -> None:
        self.found.append(("mail", digest.id) in outbox(self.base))
        await super().send(digest)


def test_a_digest_is_in_the_outbox_before_its_sink_sees_it(sockdir: Path) -> None:
    """The dispatch commits the digests to the outbox before any worker gets one: a crash
    mid-send loses no digest."""
    clock = VirtualClock()
    mail = OutboxReader(clock, sockdir)
    p = Parts(sockdir, clock, mail)

    async def scenario() -> None:
        async with p.running():
            p.pipeline.accept(event(at=clock.now()))
            p.scheduler.collect(force=True, why="flush")
            await mail.wait(1, within=10.0)

    run(scenario())
    assert mail.found == [True]
