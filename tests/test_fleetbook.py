"""The ban book's fleet pages alone (daemon/fleetbook.py): what this host tells the fleet,
the exceptions an admin made, the refusals remembered; on a real state database."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrapalert.daemon import fleetbook
from wrapalert.daemon.banpolicy import Ban, Refusal
from wrapalert.daemon.fleetbook import FleetBook
from wrapalert.daemon.store import Store
from wrapalert.fleetwire import FleetBan, View

NOW = 1_800_000_000.0


def pages(tmp_path: Path) -> FleetBook:
    store = Store(tmp_path / "state")
    store.open()
    return FleetBook(store)


def local(
    target: str = "203.0.113.7", reason: str = "10 refusals", until: float = NOW + 3600
) -> Ban:
    return Ban(target, reason, NOW, until)


def fleet_ban(target: str = "203.0.113.7", until: float = NOW + 600) -> Ban:
    return Ban(target, "fleet: banned on host-a", NOW, until, origin="fleet", hosts=("host-a",))


def test_a_ban_of_this_hosts_own_is_announced_at_once(tmp_path: Path) -> None:
    """A local ban is a notice, taken once as a change (and the poster woken)."""
    book = pages(tmp_path)
    book.published(local())
    assert book.wake.is_set()
    (notice,) = book.take_changed()
    assert (notice.target, notice.label, notice.until, notice.ended) == (
        "203.0.113.7",
        "threshold",
        NOW + 3600,
        None,
    )
    assert book.take_changed() == []
    assert not book.wake.is_set()


def test_followed_dry_run_and_adopted_bans_are_never_announced(tmp_path: Path) -> None:
    """No echo of the fleet's own bans; a dry-run ban is no ban; a ban found in the kernel
    without a record is of unknown origin."""
    book = pages(tmp_path)
    book.published(fleet_ban())
    book.published(Ban("203.0.113.8", "10 refusals", NOW, NOW + 60, dry_run=True))
    book.published(Ban("203.0.113.9", "found in the kernel", NOW, NOW + 60))
    assert book.take_changed() == []
    assert book.every(NOW) == []


def test_a_lift_is_announced_as_resolved_until_the_ban_would_have_ended(tmp_path: Path) -> None:
    """`ban del`: the notice ends now and is posted again in every whole post (a peer that
    missed it hears it later), until the ban's own end has passed."""
    book = pages(tmp_path)
    book.published(local(until=NOW + 100))
    book.take_changed()
    book.lifted(local(until=NOW + 100), NOW + 5)
    (changed,) = book.take_changed()
    assert changed.ended == NOW + 5
    assert [n.ended for n in book.every(NOW + 50)] == [NOW + 5]
    assert book.every(NOW + 100) == []


def test_an_expired_ban_is_simply_forgotten(tmp_path: Path) -> None:
    """Its alert ends by itself at endsAt: nothing to post."""
    book = pages(tmp_path)
    book.published(local())
    book.take_changed()
    book.expired(local())
    assert book.take_changed() == []
    assert book.every(NOW) == []


def test_a_new_reason_for_the_same_target_resolves_the_old_alert(tmp_path: Path) -> None:
    """A source re-banned by hand while banned by threshold: the threshold alert (another
    label set) is resolved, the manual one announced."""
    book = pages(tmp_path)
    book.published(local())
    book.published(Ban("203.0.113.7", "by hand", NOW + 10, NOW + 7200))
    kinds = {(n.label, n.ended) for n in book.take_changed()}
    assert kinds == {("threshold", NOW + 10), ("manual", None)}


def test_resolutions_kept_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_RESOLVED lifted notices, the oldest are forgotten."""
    monkeypatch.setattr(fleetbook, "MAX_RESOLVED", 2)
    book = pages(tmp_path)
    for i in range(4):
        ban = local(f"203.0.113.{i}")
        book.published(ban)
        book.lifted(ban, NOW + i)
    assert sorted(n.target for n in book.every(NOW)) == ["203.0.113.2", "203.0.113.3"]


def test_an_exception_holds_while_that_fleet_ban_lasts_and_is_saved(tmp_path: Path) -> None:
    """A fleet ban lifted by hand is not followed again while the fleet keeps the same ban
    (also after a restart), and is again once the fleet bans it past that end."""
    book = pages(tmp_path)
    book.except_(fleet_ban(until=NOW + 600))
    assert book.store.commit()
    again = FleetBook(book.store)
    again.load()
    assert again.excepted("203.0.113.7", FleetBan(("host-a",), NOW + 600))
    assert again.excepted("203.0.113.7", FleetBan(("host-a", "host-b"), NOW + 300))
    assert not again.excepted("203.0.113.7", FleetBan(("host-b",), NOW + 900))
    assert not again.excepted("198.51.100.1", FleetBan(("host-a",), NOW + 600))


def test_an_exception_ends_with_its_fleet_ban(tmp_path: Path) -> None:
    """Once the fleet no longer holds the ban, or bans it anew past the lifted end, the
    exception is dropped (and the drop saved)."""
    book = pages(tmp_path)
    book.except_(fleet_ban("203.0.113.7", NOW + 600))
    book.except_(fleet_ban("203.0.113.8", NOW + 600))
    book.except_(fleet_ban("203.0.113.9", NOW + 600))
    view = View(bans={
        "203.0.113.7": FleetBan(("host-a",), NOW + 600),
        "203.0.113.8": FleetBan(("host-a",), NOW + 900),
    })  # fmt: skip
    book.forget(view, NOW)
    assert set(book.exceptions) == {"203.0.113.7"}
    assert book.store.commit()
    assert book.store.fleet_exceptions() == [("203.0.113.7", NOW + 600)]


def test_refusals_are_remembered_for_their_time(tmp_path: Path) -> None:
    """An allowlisted or wide fleet ban is not looked at again until it ends; a session or
    the cap, for a window; a reload forgets them all."""
    book = pages(tmp_path)
    book.remember(Refusal("203.0.113.1", "fleet", "allowlisted", "", NOW + 600), 60.0, NOW)
    book.remember(Refusal("203.0.113.2", "fleet", "session", "", NOW + 600), 60.0, NOW)
    assert book.remembered("203.0.113.1", NOW + 599)
    assert book.remembered("203.0.113.2", NOW + 59)
    assert not book.remembered("203.0.113.2", NOW + 60)
    book.forget(View(), NOW + 61)
    assert set(book.refused) == {"203.0.113.1"}
    book.reset_refusals()
    assert not book.remembered("203.0.113.1", NOW)
