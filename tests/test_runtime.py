"""The runtime alone (daemon/runtime.py): everything one config builds, built around the
long-lived parts it is given, from a previous runtime's state without changing it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from timing import ManualClock, VirtualClock, run

from wrapalert import config
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.runtime import Runtime, RuntimeBuilder
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.store import Store
from wrapalert.model import Digest, Event
from wrapalert.sinks.base import DIGESTS, Built

TOML = """
[digest]
group_wait = "10s"
[[sink]]
type = "maildir"
path = "/nonexistent/Maildir"
"""


class Mailbox:
    name = "mail"

    def __init__(self) -> None:
        self.digests: list[Digest] = []

    async def send(self, digest: Digest) -> None:
        self.digests.append(digest)


def builder(tmp_path: Path, clock: ManualClock | VirtualClock) -> RuntimeBuilder:
    """The long-lived parts a runtime is built around, over a real state database."""
    store = Store(tmp_path / "state")
    store.open()
    ledger = Ledger(store, clock)
    return RuntimeBuilder(
        clock=clock,
        ledger=ledger,
        silences=Silences(store, clock),
        bans=Bans(store, clock, ledger.stats),
    )


def event(addr: str, at: float) -> Event:
    return Event({"daemon": "sshd", "client_addr": addr}, at, uid=0)


def test_a_runtime_is_built_around_the_long_lived_parts(tmp_path: Path) -> None:
    """The pipeline's aggregator is the scheduler's, the scheduler queues to the set's
    digest workers, and what changes is staged in the ledger's one journal."""
    parts = builder(tmp_path, ManualClock())
    runtime = parts.build(config.loads(TOML))
    assert runtime.scheduler.aggregator is runtime.aggregator
    assert runtime.scheduler.workers is runtime.sinks.workers
    assert list(runtime.sinks.workers) == ["maildir"]
    runtime.pipeline.accept(event("192.0.2.1", 1.0))
    assert list(parts.ledger.groups.groups) == [("sshd", "192.0.2.1")]
    assert runtime.aggregator.changes is parts.ledger.groups


def test_a_successor_starts_from_the_groups_and_leaves_them_as_they_were(
    tmp_path: Path,
) -> None:
    """Building from a previous runtime copies its groups (timers included) as plain
    data: the previous one's groups are untouched, and one's changes are not the other's."""
    parts = builder(tmp_path, ManualClock())
    old = parts.build(config.loads(TOML))
    old.pipeline.accept(event("192.0.2.1", 1.0))
    before = old.aggregator.export_all()
    new = parts.build(config.loads(TOML.replace('"10s"', '"20s"')), previous=old)
    assert new.aggregator.export_all() == before
    assert new.aggregator.next_due() == 11.0  # the group's timer is its own, not the config's
    new.pipeline.accept(event("192.0.2.1", 2.0))
    assert old.aggregator.export_all() == before
    assert new.aggregator.groups[("sshd", "192.0.2.1")].total == 2


def test_stop_flushes_every_group_and_lets_the_sinks_deliver(tmp_path: Path) -> None:
    """Started in a TaskGroup, a runtime stopped reports every group with news as a
    shutdown flush, committed to the outbox, and its sinks deliver it within the grace."""
    clock = VirtualClock()
    mailbox = Mailbox()

    async def scenario() -> Runtime:
        parts = builder(tmp_path, clock)
        runtime = parts.build(config.loads(TOML), built=[Built(mailbox, DIGESTS)])
        async with asyncio.TaskGroup() as tg:
            runtime.start(tg)
            runtime.pipeline.accept(event("192.0.2.1", clock.now()))
            await asyncio.sleep(1)  # well before group_wait
            await runtime.stop(grace=5.0)
        return runtime

    runtime = run(scenario())
    (digest,) = mailbox.digests
    assert [g.reason for g in digest.groups] == ["shutdown flush"]
    assert runtime.scheduler.task is not None
    assert runtime.scheduler.task.cancelled()
    assert all(task.done() for task in runtime.sinks.tasks)
