"""The ban history alone (daemon/banhistory.py): when each target was banned, counted within
a memory, bounded per target and in targets, forgetting the least recently banned first."""

from __future__ import annotations

import pytest

from wrapalert.daemon import banhistory
from wrapalert.daemon.banhistory import BanHistory

DAY = 86400.0


def test_earlier_bans_are_counted_within_the_memory_only() -> None:
    """Bans older than the memory, and bans after `now`, are not earlier ones."""
    history = BanHistory()
    for at in (1 * DAY, 10 * DAY, 20 * DAY):
        history.add("203.0.113.7", at)
    assert history.earlier("203.0.113.7", 21 * DAY, 30 * DAY) == 3
    assert history.earlier("203.0.113.7", 35 * DAY, 30 * DAY) == 2  # day 1 is past 30 days
    assert history.earlier("203.0.113.7", 15 * DAY, 30 * DAY) == 2  # day 20 is not before
    assert history.earlier("198.51.100.7", 21 * DAY, 30 * DAY) == 0


def test_loaded_rows_in_any_order_keep_each_targets_times_in_order() -> None:
    """The state database's rows come back as they were made, oldest first, and the
    target banned last is the one kept longest."""
    history = BanHistory()
    history.load([("b", 3.0), ("a", 2.0), ("b", 1.0)])
    assert history.times("b") == (1.0, 3.0)
    assert history.targets() == ["a", "b"]


def test_forget_before_drops_old_bans_and_empty_targets() -> None:
    """Pruning keeps what is newer than the horizon; a target with nothing left goes."""
    history = BanHistory()
    history.add("a", 1.0)
    history.add("b", 1.0)
    history.add("b", 5.0)
    history.forget_before(2.0)
    assert history.targets() == ["b"]
    assert history.times("b") == (5.0,)


def test_bounds_keep_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PER_TARGET a target keeps its newest bans; past MAX_TARGETS the target
    banned least recently is forgotten (and said so)."""
    monkeypatch.setattr(banhistory, "MAX_PER_TARGET", 3)
    monkeypatch.setattr(banhistory, "MAX_TARGETS", 2)
    history = BanHistory()
    for at in range(5):
        history.add("a", float(at))
    assert history.times("a") == (2.0, 3.0, 4.0)
    assert history.add("b", 5.0) == []
    history.add("a", 6.0)  # a is now the most recently banned
    assert history.add("c", 7.0) == ["b"]
    assert history.targets() == ["a", "c"]
    assert len(history) == 2
