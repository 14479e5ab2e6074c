"""The ledger's commits (daemon/ledger.py): the group changes of whichever aggregator is
in force staged with the counters, and a flood committed early, on a real state database."""

from __future__ import annotations

from pathlib import Path

from timing import ManualClock

from wrapalert.config import DigestConfig
from wrapalert.daemon.ledger import COMMIT_EVERY, Ledger
from wrapalert.daemon.store import Store
from wrapalert.model import Event
from wrapalert.pipeline.aggregate import Aggregator


def ledger(tmp_path: Path) -> Ledger:
    store = Store(tmp_path)
    store.open()
    return Ledger(store, ManualClock())


def test_a_commit_saves_the_groups_any_aggregator_changed(tmp_path: Path) -> None:
    """Groups changed through an aggregator given the ledger's journal are in the state
    database after the next commit, with the counters."""
    books = ledger(tmp_path)
    agg = Aggregator(DigestConfig(), 100, changes=books.groups)
    agg.add(Event({"daemon": "sshd", "client_addr": "192.0.2.1"}, 1.0, uid=0), 1.0)
    books.stats.received += 1
    assert books.commit()
    snap = books.store.load()
    assert [g["key"] for g in snap.groups] == [["sshd", "192.0.2.1"]]
    assert snap.counters["received"] == 1


def test_a_flood_commits_every_commit_every_datagrams(tmp_path: Path) -> None:
    """Datagrams read count toward an early commit: none before COMMIT_EVERY since the
    last one, one when it is reached, and the count starts over."""
    books = ledger(tmp_path)
    books.stats.received += 1  # something to write
    books.accepted(COMMIT_EVERY - 1)
    assert books.store.commits == 0
    books.accepted(1)
    assert books.store.commits == 1
    assert books.since_commit == 0
