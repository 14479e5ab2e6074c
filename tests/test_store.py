"""The SQLite state on real files: round trips, migrations, damage, unwritable dirs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import one_group

from wrapalert.daemon.store import DB_NAME, SCHEMA_VERSION, StateError, Store
from wrapalert.model import BanNote, Digest


def opened(path: Path) -> Store:
    store = Store(path)
    store.open()
    return store


def test_staged_changes_come_back_after_reopening(tmp_path: Path) -> None:
    """Groups, counters and outbox rows committed together are all there after a reopen."""
    store = opened(tmp_path)
    d = one_group()
    store.stage_group(("sshd", "192.0.2.1"), {"new": 3})
    store.stage_counters({"received": 3})
    store.stage_enqueue("smtp", d)
    assert store.commit()
    store.close()
    snap = opened(tmp_path).load()
    assert snap.groups == [{"new": 3}]
    assert snap.counters == {"received": 3}
    ((row),) = snap.outbox
    assert (row.sink, row.digest, row.failed_error) == ("smtp", d, None)


def test_delivered_digests_leave_the_outbox_for_the_log(tmp_path: Path) -> None:
    """A delivered digest is removed from the outbox and written to the notification log."""
    store = opened(tmp_path)
    d = one_group()
    store.stage_enqueue("smtp", d)
    store.stage_delivered("smtp", d)
    assert store.commit()
    assert store.load().outbox == []
    assert store.db is not None
    assert store.db.execute("SELECT sink, digest_id, events FROM notification_log").fetchall() == [
        ("smtp", d.id, 2)
    ]


def test_merged_digests_replace_their_parts(tmp_path: Path) -> None:
    """A merge swaps the parts for the whole in one commit: never both, never neither."""
    store = opened(tmp_path)
    a, b = one_group(1, created=1.0), one_group(2, created=2.0)
    store.stage_enqueue("smtp", a)
    store.stage_enqueue("smtp", b)
    store.commit()
    merged = Digest(host="web1", created=3.0, groups=a.groups + b.groups)
    store.stage_replace("smtp", [a.id, b.id], merged)
    store.commit()
    assert [r.digest.id for r in store.load().outbox] == [merged.id]


def test_failed_digests_are_marked_and_retried_on_request(tmp_path: Path) -> None:
    """A permanent failure is recorded with its error until a retry clears it."""
    store = opened(tmp_path)
    d = one_group()
    store.stage_enqueue("smtp", d)
    store.stage_failed("smtp", d, "554 no")
    store.commit()
    assert store.load().outbox[0].failed_error == "554 no"
    store.stage_retry_failed()
    store.commit()
    assert store.load().outbox[0].failed_error is None


def test_a_damaged_database_is_moved_aside_not_emptied(tmp_path: Path) -> None:
    """A file that is not SQLite is kept under a new name and a fresh database started."""
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    store = opened(tmp_path)
    assert store.error is None
    assert store.moved_aside is not None
    assert store.moved_aside.read_bytes().startswith(b"this is not a database")
    assert store.load().groups == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer wrapalert stops the start instead of being replaced."""
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this wrapalert"):
        Store(tmp_path).open()
    assert (tmp_path / DB_NAME).exists()


def test_migrations_bring_an_empty_database_to_the_current_version(tmp_path: Path) -> None:
    """A new database ends at SCHEMA_VERSION with every table present."""
    store = opened(tmp_path)
    assert store.db is not None
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= {"meta", "groups", "outbox", "notification_log", "spool_seen", "silences"}


def test_unwritable_state_dir_keeps_changes_staged_and_says_why(tmp_path: Path) -> None:
    """Without a usable state_dir the store reports the error, keeps its changes, and
    writes them once the directory can be used."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    store = Store(blocker)
    store.open()
    assert store.error is not None
    assert "state" in store.error
    store.stage_counters({"received": 7})
    assert not store.commit()
    assert store.staged
    blocker.unlink()
    assert store.commit()
    assert store.error is None
    assert opened(blocker).load().counters == {"received": 7}


def test_ban_notes_come_back_and_a_damaged_row_costs_only_them(tmp_path: Path) -> None:
    """The ban notes for the next digest survive a reopen; a row that is not what we wrote
    reads as no notes (the bans themselves are in their own table)."""
    store = opened(tmp_path)
    assert store.ban_notes() == ([], 0)
    store.stage_ban_notes([BanNote("banned", "203.0.113.9", "by hand", 1714564800.5)], 2)
    assert store.commit()
    store.close()
    store = opened(tmp_path)
    assert store.ban_notes() == ([BanNote("banned", "203.0.113.9", "by hand", 1714564800.5)], 2)
    store.close()
    for damaged in ("{", '{"notes": [["banned", "x"]]}', '{"notes": 5}', "[1]", '{"more": "x"}'):
        with sqlite3.connect(tmp_path / DB_NAME) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'ban_notes'", (damaged,))
        store = opened(tmp_path)
        assert store.ban_notes() == ([], 0), damaged
        store.close()
