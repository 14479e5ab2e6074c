"""The silence book alone (daemon/silences.py): durable in a real state database, asked
per event as a Muter, on a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from timing import ManualClock

from wrapalert.daemon.silences import MAX_COMMENT, SilenceError, Silences
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher
from wrapalert.model import Event


def sshd(addr: str = "203.0.113.9") -> Event:
    return Event({"daemon": "sshd", "client_addr": addr}, 0.0)


def matchers(*texts: str) -> tuple[Matcher, ...]:
    return tuple(Matcher.parse(t) for t in texts)


def opened(path: Path) -> Store:
    store = Store(path)
    store.open()
    return store


def test_a_silence_mutes_until_it_expires_and_counts_for_the_digest(tmp_path: Path) -> None:
    """An added silence mutes matching events from now until its expiry, counting each
    for the next digest; other events pass."""
    clock = ManualClock()
    book = Silences(opened(tmp_path), clock)
    assert not book.active
    book.add(matchers("daemon=sshd"), 60.0)
    assert book.active
    assert book.mutes(sshd(), clock.now())
    assert book.mutes(sshd(), clock.now() + 59.9)
    assert not book.mutes(Event({"daemon": "vsftpd"}, 0.0), clock.now())
    assert book.take_silenced() == 2
    assert book.take_silenced() == 0
    assert not book.mutes(sshd(), clock.now() + 60.0)
    assert not book.active  # gone at its expiry: the per-event check is skipped again


def test_silences_survive_a_restart_and_expire_for_good(tmp_path: Path) -> None:
    """A silence is in the state database as soon as it is added: a new book (a restart)
    loads it; one expired by hand is gone from both."""
    clock = ManualClock()
    book = Silences(opened(tmp_path), clock)
    kept = book.add(matchers("daemon=sshd", "client=203.0.113.0/24"), 3600.0, "scanner")
    gone = book.add(matchers("daemon=vsftpd"), 3600.0)
    assert (kept.durable, gone.durable) == (True, True)
    assert book.expire(gone.id) == gone
    book.store.close()
    again = Silences(opened(tmp_path), clock)
    again.load()
    (loaded,) = again.in_force()
    assert (loaded.id, loaded.comment, loaded.expires) == (kept.id, "scanner", kept.expires)
    assert [str(m) for m in loaded.matchers] == ["daemon=sshd", "client_addr=203.0.113.0/24"]
    assert again.mutes(sshd(), clock.now())


@pytest.mark.parametrize(
    "damage",
    [
        "not json",  # the row's JSON itself
        '{"daemon": "sshd"}',  # JSON, but not a list of matchers
        '["daemon=sshd", 7]',  # a list, but not of strings
        '["no equals sign"]',  # strings no matcher parses
    ],
)
def test_a_damaged_silence_costs_that_silence_not_the_start(tmp_path: Path, damage: str) -> None:
    """A silence row whose matchers cannot be read is skipped (and said) at load; the other
    silences load and mute as before, so a damaged database never stops the daemon."""
    clock = ManualClock()
    book = Silences(opened(tmp_path), clock)
    kept = book.add(matchers("daemon=sshd"), 3600.0)
    broken = book.add(matchers("daemon=vsftpd"), 3600.0)
    assert book.store.db is not None
    book.store.db.execute("UPDATE silences SET matchers = ? WHERE id = ?", (damage, broken.id))
    book.store.db.commit()
    book.store.close()
    again = Silences(opened(tmp_path), clock)
    again.load()
    assert [s.id for s in again.in_force()] == [kept.id]
    assert again.mutes(sshd(), clock.now())


def test_without_a_state_database_a_silence_lives_in_memory(tmp_path: Path) -> None:
    """With the state unavailable a silence still mutes, under a negative id, not durable."""
    (tmp_path / "file").write_text("")
    book = Silences(opened(tmp_path / "file" / "state"), ManualClock())  # cannot be made
    silence = book.add(matchers("daemon=sshd"), 60.0)
    assert (silence.id, silence.durable) == (-1, False)
    assert book.mutes(sshd(), book.clock.now())


@pytest.mark.parametrize(
    ("texts", "seconds", "error"),
    [
        ((), 60.0, "at least one field=value matcher"),
        (("daemon=sshd",), 0.0, "duration of up to a year"),
        (("daemon=sshd",), 367 * 86400.0, "duration of up to a year"),
    ],
)
def test_a_silence_that_cannot_be_is_refused(
    tmp_path: Path, texts: tuple[str, ...], seconds: float, error: str
) -> None:
    """No matchers, no time or more than a year: refused with the reason, nothing stored."""
    book = Silences(opened(tmp_path), ManualClock())
    with pytest.raises(SilenceError, match=error):
        book.add(matchers(*texts), seconds)
    assert book.in_force() == []
    assert book.store.silences(0.0) == []


def test_expiring_what_is_not_active_is_refused_and_comments_are_bounded(tmp_path: Path) -> None:
    """An id no active silence has is refused by name; a comment is kept to MAX_COMMENT."""
    book = Silences(opened(tmp_path), ManualClock())
    with pytest.raises(SilenceError, match="no active silence with id 7"):
        book.expire(7)
    silence = book.add(matchers("daemon=sshd"), 60.0, "x" * (MAX_COMMENT + 100))
    assert len(silence.comment) == MAX_COMMENT
