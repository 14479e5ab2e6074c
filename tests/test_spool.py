"""daemon/spool.py alone: files clients left in the shared spool become events once, are
removed only after their events are committed, and junk is refused and counted; with a
real Intake (and its socket) and a real state database in tmp dirs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Into, canary_book
from timing import ManualClock

from wrapalert.daemon import spool as spool_mod
from wrapalert.daemon.activity import Activity
from wrapalert.daemon.intake import Intake, open_socket
from wrapalert.daemon.spool import Spool
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.daemon.twins import Twins
from wrapalert.daemon.witness import Witness
from wrapalert.model import Event
from wrapalert.wire import encode

YEAR_2000 = 946684800


@dataclass
class Rig:
    spool: Spool
    dir: Path
    stats: Stats
    events: list[Event]
    store: Store


def rig_for(base: Path, store: Store, *, seen: tuple[str, ...] = ()) -> Rig:
    directory = base / "spool"
    stats, events = Stats(), list[Event]()
    intake = Intake(
        open_socket(base / "notify.sock", 0o666),
        target=Into(events.append, frozenset({os.getuid()})),
        stats=stats,
        twins=Twins(),
        witness=Witness(stats, lambda: 0.0),
        canary=canary_book(stats),
        activity=Activity(),
    )
    spool = Spool(
        directory, intake=intake, store=store, commit=store.commit, clock=ManualClock(), seen=seen
    )
    spool.ensure()
    return Rig(spool, directory, stats, events, store)


@pytest.fixture
def rig(sockdir: Path) -> Iterator[Rig]:
    """A spool dir with a working state database."""
    store = Store(sockdir / "state")
    store.open()
    made = rig_for(sockdir, store)
    yield made
    made.spool.intake.close(sockdir / "notify.sock")
    store.close()


def spooled(directory: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    """A spool file as the client writes it: its own, mode 0600 unless `mode` says."""
    path = directory / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def refusal(addr: str = "192.0.2.1") -> bytes:
    return encode({"d": "sshd", "a": addr})


def test_a_spooled_event_is_passed_on_and_its_file_removed(rig: Rig) -> None:
    """A client's file becomes one spool event, counted spooled; once it is committed the
    file goes."""
    spooled(rig.dir, "1700000000.000001.1.wa1", refusal())
    rig.spool.ingest()
    assert [(e.get("client_addr"), e.origin) for e in rig.events] == [("192.0.2.1", "spool")]
    assert rig.stats.spooled == 1
    assert not (rig.dir / "1700000000.000001.1.wa1").exists()


def test_a_file_stays_until_its_event_is_committed_and_counts_once(sockdir: Path) -> None:
    """While the state database cannot be written, the file is the only durable copy and
    stays; when the commit works again it goes, and its event was counted once."""
    blocked = sockdir / "blocked"
    blocked.write_text("a file where the state dir should be")
    store = Store(blocked / "state")
    store.open()
    made = rig_for(sockdir, store)
    path = spooled(made.dir, "1700000000.000001.1.wa1", refusal())
    made.spool.ingest()
    assert path.exists()
    blocked.unlink()  # the disk problem clears
    made.spool.ingest()
    assert not path.exists()
    assert (len(made.events), made.stats.spooled) == (1, 1)
    made.spool.intake.close(sockdir / "notify.sock")


def test_files_the_last_run_counted_are_removed_not_counted_again(sockdir: Path) -> None:
    """Names committed by a run that died before removing them are removed at the next
    start without passing their events on again."""
    store = Store(sockdir / "state")
    store.open()
    name = "1700000000.000001.1.wa1"
    made = rig_for(sockdir, store, seen=(name,))
    path = spooled(made.dir, name, refusal())
    made.spool.ingest()
    assert not path.exists()
    assert (made.events, made.stats.spooled) == ([], 0)
    made.spool.intake.close(sockdir / "notify.sock")


@pytest.mark.parametrize("mode", [0o644, 0o606, 0o4600])
def test_a_file_others_may_read_or_write_is_refused_and_removed(rig: Rig, mode: int) -> None:
    """A spool file must be 0600 or stricter: anything looser speaks for nobody, is
    counted as spool_file_mode and removed."""
    path = spooled(rig.dir, "1700000000.000001.1.wa1", refusal(), mode)
    rig.spool.ingest()
    assert rig.events == []
    assert rig.stats.rejected == Counter({"spool_file_mode": 1})
    assert not path.exists()


def test_a_hard_link_is_refused(rig: Rig, tmp_path: Path) -> None:
    """A file with a second link may be someone else's: refused as spool_hard_link."""
    original = spooled(tmp_path, "elsewhere", refusal())
    os.link(original, rig.dir / "1700000000.000001.1.wa1")
    rig.spool.ingest()
    assert rig.events == []
    assert rig.stats.rejected == Counter({"spool_hard_link": 1})
    assert original.read_bytes() == refusal()


def test_a_symlink_is_refused_and_its_target_left_alone(rig: Rig, tmp_path: Path) -> None:
    """A symlink in the spool is never followed: refused, and what it points at stays."""
    target = spooled(tmp_path, "target", refusal())
    (rig.dir / "1700000000.000001.1.wa1").symlink_to(target)
    rig.spool.ingest()
    assert rig.events == []
    assert rig.stats.rejected == Counter({"bad_spool_file": 1})
    assert target.exists()


def test_a_stale_dot_file_is_swept_and_a_fresh_one_left(rig: Rig) -> None:
    """A dot file (a client mid-write) is left while fresh; one untouched for long is
    removed and counted as stale_spool_file."""
    fresh = spooled(rig.dir, ".1700000000.000002.1.tmp", b"WA1\n")
    stale = spooled(rig.dir, ".1700000000.000001.1.tmp", b"WA1\n")
    os.utime(stale, (YEAR_2000, YEAR_2000))
    rig.spool.ingest()
    assert fresh.exists()
    assert not stale.exists()
    assert rig.stats.rejected == Counter({"stale_spool_file": 1})


def test_a_pass_reads_a_bounded_batch_oldest_first(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most SPOOL_BATCH files a pass, the oldest names (their times) first; the next
    pass takes the rest."""
    monkeypatch.setattr(spool_mod, "SPOOL_BATCH", 2)
    for i in (3, 1, 2):
        spooled(rig.dir, f"170000000{i}.000001.1.wa1", refusal(f"192.0.2.{i}"))
    rig.spool.ingest()
    assert [e.get("client_addr") for e in rig.events] == ["192.0.2.1", "192.0.2.2"]
    rig.spool.ingest()
    assert [e.get("client_addr") for e in rig.events][2:] == ["192.0.2.3"]
