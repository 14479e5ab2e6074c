"""daemon/ledger.py alone: what a start reads back, what a commit writes in one
transaction, and the counts the pipeline and the sink workers report, against a real
state database in a tmp dir (read back through a second connection)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from helpers import event, one_group
from timing import ManualClock, VirtualClock, run

from wrapalert.config import DigestConfig
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.store import Snapshot, Store
from wrapalert.model import Digest
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.scanrule import ScanSignal
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError

KEY = ("sshd", "192.0.2.1")
REFUSAL = {"daemon": "sshd", "client_addr": "192.0.2.1", "client_port": "40022"}


def ledger_at(path: Path, clock: ManualClock | VirtualClock) -> Ledger:
    """A ledger on a store opened in `path`, on `clock`."""
    store = Store(path, clock.now)
    store.open()
    return Ledger(store, clock)


def saved(path: Path) -> Snapshot:
    """What the database in `path` holds now, read through a connection of its own."""
    store = Store(path)
    store.open()
    try:
        return store.load()
    finally:
        store.close()


def queued(path: Path, sink: str, *digests: Digest) -> None:
    """Put `digests` in the outbox of `sink`, committed, as an earlier run would have."""
    store = Store(path)
    store.open()
    for digest in digests:
        store.stage_enqueue(sink, digest)
    assert store.commit()
    store.close()


class Hook:
    """An on_delivery hook that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Digest, Exception | None]] = []

    def __call__(self, sink: str, digest: Digest, error: Exception | None) -> None:
        self.calls.append((sink, digest, error))


# -- a start: load --------------------------------------------------------------------


def test_load_adds_the_saved_counters_to_the_stats_the_parts_hold(tmp_path: Path) -> None:
    """The last run's counters come back into the same Stats object, which the parts that
    count were given before the load."""
    first = ledger_at(tmp_path, ManualClock())
    first.stats.received, first.stats.rejected["bad_tag"] = 7, 2
    assert first.commit()
    again = ledger_at(tmp_path, ManualClock())
    held = again.stats
    again.load(["mail"])
    assert again.stats is held
    assert (held.received, held.rejected["bad_tag"]) == (7, 2)


def test_load_hands_each_sink_its_queued_and_failed_digests(tmp_path: Path) -> None:
    """Each sink's outbox rows come back as its worker's state: queued ones in order, a
    failed one set aside with its error."""
    waiting, later, refused = one_group(1, "192.0.2.1"), one_group(2, "192.0.2.2"), one_group(3)
    queued(tmp_path, "mail", waiting, later, refused)
    store = Store(tmp_path)
    store.open()
    store.stage_failed("mail", refused, "554 5.7.1 policy")
    assert store.commit()
    ledger = ledger_at(tmp_path, ManualClock())
    _, states = ledger.load(["mail"])
    assert [d.id for d in states["mail"].queue] == [waiting.id, later.id]
    assert [d.id for d in states["mail"].failed] == [refused.id]
    assert states["mail"].last_error == "554 5.7.1 policy"


def test_load_keeps_the_outbox_of_a_sink_no_longer_named(tmp_path: Path) -> None:
    """Digests of a sink the config dropped still come back, under that sink's name, so
    the owner can say they are orphaned rather than lose them."""
    digest = one_group(2)
    queued(tmp_path, "old-mx", digest)
    _, states = ledger_at(tmp_path, ManualClock()).load(["mail"])
    assert [d.id for d in states["old-mx"].queue] == [digest.id]
    assert states["mail"].queue == []


def test_load_seeds_the_mail_cap_with_the_last_hours_sends(tmp_path: Path) -> None:
    """The cap counts the sends of the last hour before a restart, not older ones: a
    restart loop cannot reset it."""
    clock = ManualClock(10_000.0)
    ledger = ledger_at(tmp_path, clock)
    old, recent = one_group(1, "192.0.2.1"), one_group(1, "192.0.2.2")
    ledger.delivered("mail", old, None)  # at 10,000
    clock.t = 13_500.0
    ledger.delivered("mail", recent, None)
    clock.t = 14_000.0  # the first send is 4,000 s ago
    _, states = ledger_at(tmp_path, clock).load(["mail"])
    assert states["mail"].sent == [13_500.0]


# -- a commit -------------------------------------------------------------------------


def test_commit_writes_groups_counters_and_twins_together(tmp_path: Path) -> None:
    """One commit writes what the pipeline changed, the counters and the identities of
    the refusals seen: all of it is in the database afterwards."""
    clock = ManualClock(5_000.0)
    ledger = ledger_at(tmp_path, clock)
    aggregator = Aggregator(DigestConfig(), 100, changes=ledger.groups)  # writes what changed
    aggregator.add(event("sshd", "192.0.2.1"), 5_000.0)
    group = aggregator.export(KEY)
    ledger.stats.received = 3
    assert not ledger.twins.copy(0, REFUSAL | {"hook_pid": "4242"}, clock.now(), trusted=True)
    assert ledger.commit()
    snap = saved(tmp_path)
    assert snap.groups == [group]
    assert snap.counters["received"] == 3
    store = Store(tmp_path)
    store.open()
    assert [key for key, _ in store.twins()] == [(0, "4242", "", "sshd", "192.0.2.1", "40022")]


def test_a_group_the_pipeline_dropped_leaves_the_database(tmp_path: Path) -> None:
    """A group change of None deletes the group's saved state."""
    ledger = ledger_at(tmp_path, ManualClock())
    aggregator = Aggregator(DigestConfig(), 100, changes=ledger.groups)
    aggregator.add(event("sshd", "192.0.2.1"), 0.0)
    ledger.commit()
    assert len(saved(tmp_path).groups) == 1
    ledger.groups.groups[KEY] = None  # as the aggregator notes a group it forgot
    ledger.commit()
    assert saved(tmp_path).groups == []


def test_commit_restarts_the_flood_count(tmp_path: Path) -> None:
    """The events accepted since the last commit (a flood commits early) count from zero
    after a commit."""
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.since_commit = 9_999
    ledger.commit()
    assert ledger.since_commit == 0


def test_twins_saved_by_a_commit_are_known_after_a_restart(tmp_path: Path) -> None:
    """A refusal's identity committed by one run makes its second copy, arriving after a
    restart, a duplicate there."""
    clock = ManualClock(5_000.0)
    first = ledger_at(tmp_path, clock)
    report = REFUSAL | {"hook_pid": "4242"}
    assert not first.twins.copy(0, report, clock.now(), trusted=True)
    first.commit()
    clock.t += 5
    again = ledger_at(tmp_path, clock)
    again.load([])
    assert again.twins.copy(0, report, clock.now(), trusted=True)


def test_the_committer_writes_on_its_interval_not_per_event(tmp_path: Path) -> None:
    """`run` commits what changed once per interval: a count made at once is in the
    database after the interval, not before."""
    clock = VirtualClock()
    ledger = ledger_at(tmp_path, clock)

    async def scenario() -> tuple[int | None, int | None]:
        task = asyncio.create_task(ledger.run(5.0))
        ledger.stats.received = 1
        await asyncio.sleep(4.0)
        before = saved(tmp_path).counters.get("received")
        await asyncio.sleep(2.0)
        after = saved(tmp_path).counters.get("received")
        task.cancel()
        return before, after

    assert run(scenario()) == (None, 1)


def test_an_interval_of_zero_does_not_spin(tmp_path: Path) -> None:
    """commit_interval 0 still sleeps between commits (10 ms), never a busy loop."""
    clock = ManualClock()
    ledger = ledger_at(tmp_path, clock)

    async def scenario() -> None:
        task = asyncio.create_task(ledger.run(0.0))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(scenario())
    assert clock.sleeps
    assert set(clock.sleeps) == {0.01}


# -- what the pipeline reports ----------------------------------------------------


def test_muted_events_are_counted_by_why(tmp_path: Path) -> None:
    """[ignore] counts as ignored; anything else the mute stage stops, as silenced."""
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.muted("ignored")
    ledger.muted("silenced")
    ledger.muted("silenced")
    assert (ledger.stats.ignored, ledger.stats.silenced) == (1, 2)


def test_each_scan_signal_is_counted(tmp_path: Path) -> None:
    """Every signal the detector raises counts, also when its log line is suppressed."""
    ledger = ledger_at(tmp_path, ManualClock())
    found = ScanSignal(
        kind="daemons",
        target="203.0.113.7",
        daemons=("in.ftpd", "in.telnetd", "sshd"),
        sources=1,
        first=0.0,
        last=1.0,
    )
    for _ in range(25):
        ledger.scan_found(found)
    assert ledger.stats.scans == 25


# -- what the sink workers report ---------------------------------------------------


def test_a_delivered_digest_leaves_the_outbox_and_is_counted(tmp_path: Path) -> None:
    """Delivered: out of the outbox, into the log the cap reads, counted as one digest and
    its events, committed at once; the hook hears it."""
    digest = one_group(4)
    queued(tmp_path, "mail", digest)
    clock, hook = ManualClock(2_000.0), Hook()
    ledger = ledger_at(tmp_path, clock)
    ledger.on_delivery = hook
    ledger.delivered("mail", digest, None)
    assert saved(tmp_path).outbox == []
    assert ledger.store.deliveries_since("mail", 0.0) == [2_000.0]
    stats = ledger.stats
    assert (stats.delivered["mail"], stats.events_delivered["mail"]) == (1, 4)
    assert hook.calls == [("mail", digest, None)]


def test_a_permanently_refused_digest_is_set_aside_with_its_error(tmp_path: Path) -> None:
    """Refused for good: it stays in the outbox, marked failed with the server's words,
    and counts as failed."""
    digest = one_group(4)
    queued(tmp_path, "mail", digest)
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.delivered("mail", digest, PermanentSinkError("554 5.7.1 policy"))
    (row,) = saved(tmp_path).outbox
    assert (row.digest.id, row.failed_error) == (digest.id, "554 5.7.1 policy")
    assert (ledger.stats.failed["mail"], ledger.stats.events_failed["mail"]) == (1, 4)


def test_a_transient_failure_at_shutdown_keeps_the_digest_queued(tmp_path: Path) -> None:
    """Not delivered before shutdown: still queued for the next start, counted neither
    delivered nor failed; the hook still hears it."""
    digest = one_group(4)
    queued(tmp_path, "mail", digest)
    hook = Hook()
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.on_delivery = hook
    error = TransientSinkError("421 shutting down")
    ledger.delivered("mail", digest, error)
    (row,) = saved(tmp_path).outbox
    assert (row.digest.id, row.failed_error) == (digest.id, None)
    assert (ledger.stats.delivered["mail"], ledger.stats.failed["mail"]) == (0, 0)
    assert hook.calls == [("mail", digest, error)]


def test_merged_digests_replace_their_parts_in_the_outbox_at_once(tmp_path: Path) -> None:
    """Before a merged digest is sent, the outbox holds it instead of its parts: a crash
    then can never send the parts under other Message-IDs."""
    parts = [one_group(1, "192.0.2.1"), one_group(2, "192.0.2.2")]
    queued(tmp_path, "mail", *parts)
    merged = one_group(3, "192.0.2.3")
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.merged("mail", parts, merged)
    assert [row.digest.id for row in saved(tmp_path).outbox] == [merged.id]


@pytest.mark.parametrize(("error", "delivered", "failed"), [(None, 5, 0), (OSError("gone"), 0, 5)])
def test_forwarded_records_count_events(
    tmp_path: Path, error: Exception | None, delivered: int, failed: int
) -> None:
    """A forwarding sink's batch counts its events as delivered or failed."""
    ledger = ledger_at(tmp_path, ManualClock())
    ledger.forwarded("jsonl", 5, error)
    stats = ledger.stats
    assert (stats.delivered["jsonl"], stats.events_delivered["jsonl"]) == (delivered, delivered)
    assert (stats.failed["jsonl"], stats.events_failed["jsonl"]) == (failed, failed)


def test_what_was_seen_of_sources_comes_back_after_a_stop_not_with_each_commit(
    tmp_path: Path,
) -> None:
    """Sightings (explain's memory) and scans go into the state database at close (a
    clean stop), not with a group commit; the next start's ledger answers as this one did,
    and a damaged copy starts it empty without stopping the load."""
    clock = ManualClock()
    first = ledger_at(tmp_path, clock)
    first.load(["mail"])
    first.sightings.saw(event("sshd", "203.0.113.7", at=clock.now(), transport="tcp"))
    first.scan_found(ScanSignal("daemons", "203.0.113.7", ("ftpd", "sshd"), 1, 1.0, 2.0))
    first.commit()
    assert first.store.sightings() is None  # a group commit leaves it out
    assert first.close()
    first.store.close()
    again = ledger_at(tmp_path, clock)
    again.load(["mail"])
    net = ipaddress.ip_network("203.0.113.7")
    assert again.sightings.about(net) == first.sightings.about(net)
    assert again.sightings.scans_about(net) == first.sightings.scans_about(net)
    again.store.stage_sightings({"since": "damaged"})
    assert again.store.commit()
    again.store.close()
    third = ledger_at(tmp_path, clock)
    third.load(["mail"])
    assert len(third.sightings) == 0
