"""The ban book's policy without a kernel (dry-run, or an nft that fails): refusals for
the allowlist, this host's addresses, sessions and the cap; the retry pace of a failing
kernel."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from helpers import LOGIND_SESSION

from wrapalert.banrule import normalise_allow
from wrapalert.clock import SystemClock
from wrapalert.daemon.banpolicy import MAX_MANUAL
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.fleetwire import FleetBan, View
from wrapalert.pipeline.retry import Backoff
from wrapalert.shield import Shield
from wrapalert.sinks.nftables import NftablesSink, NftablesSinkConfig


def book(tmp_path: Path, clock: SystemClock, **cfg: object) -> Bans:
    """A ban book with its own state, this host at 192.0.2.10 and a session directory."""
    store = Store(tmp_path / "state")
    store.open()
    (tmp_path / "sessions").mkdir(exist_ok=True)
    shield = Shield(lambda: ("192.0.2.10",), tmp_path / "sessions", tmp_path / "utmp")
    bans = Bans(store, clock, Stats(), shield=shield)
    bans.configure(NftablesSink(NftablesSinkConfig(**cfg)))  # type: ignore[arg-type]
    return bans


def test_refusals_name_why_and_are_remembered_for_their_time(tmp_path: Path) -> None:
    """The host's address is refused as allowlisted (for ban_for), a session's peer as
    session (for a window, with who in the digest's note), a ban past max_bans as cap."""
    bans = book(tmp_path, SystemClock(), mode="dry-run", max_bans=1, window=60.0, ban_for=3600.0)
    (tmp_path / "sessions" / "c2").write_text(LOGIND_SESSION)  # from 203.0.113.50
    now = 1000.0
    bans.request("192.0.2.10", "3 refusals", now)
    bans.request("203.0.113.50", "3 refusals", now)
    bans.request("203.0.113.7", "3 refusals", now)  # the one ban max_bans allows
    bans.request("203.0.113.8", "3 refusals", now)
    assert bans.stats.bans_refused == {"allowlisted": 1, "session": 1, "cap": 1}
    assert bans.policy.settled == {
        "192.0.2.10": now + 3600,
        "203.0.113.50": now + 60,
        "203.0.113.7": now + 3600,
        "203.0.113.8": now + 60,
    }
    refused = {n.target: n.reason for n in bans.notes if n.action == "refused"}
    assert refused["203.0.113.50"] == (
        "3 refusals; session (logged in from 203.0.113.50: root via sshd (session c2))"
    )
    assert refused["192.0.2.10"] == "3 refusals; allowlisted"


def test_bans_the_rule_would_not_make_are_lifted_at_start(tmp_path: Path) -> None:
    """At start (and reload), bans of now-allowlisted targets and automatic bans of a
    NAT64 network (an earlier version banned 64:ff9b::/64: every translated client) are
    lifted; a network banned by hand stays."""
    store = Store(tmp_path / "state")
    store.open()
    for target, reason in (
        ("64:ff9b::/64", "10 refusals"),
        ("198.51.100.9", "10 refusals"),
        ("2002::/16", "by hand"),
        ("203.0.113.7", "10 refusals"),
    ):
        store.stage_ban(target, reason, 1.0, 4e9, dry_run=False)
    assert store.commit()
    store.close()
    bans = book(tmp_path, SystemClock(), allow=normalise_allow(["198.51.100.9"]))
    bans.load()
    assert sorted(bans.policy.active) == ["2002::/16", "203.0.113.7"]
    lifted = {n.target: n.reason for n in bans.notes if n.action == "lifted"}
    assert lifted == {
        "64:ff9b::/64": "a network of NAT64, Teredo or 6to4 addresses",
        "198.51.100.9": "allowlisted",
    }


def failing_nft(tmp_path: Path) -> tuple[Path, Path]:
    """An nft that counts its runs and fails each one as nft does."""
    calls = tmp_path / "calls"
    script = tmp_path / "nft"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {calls}\n"
        'echo "Error: Could not process rule: Device or resource busy" >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script, calls


def test_a_failing_kernel_is_retried_with_backoff_not_at_once(tmp_path: Path) -> None:
    """While nft keeps failing, the book retries on the backoff (here 50 ms doubling to
    400 ms), not in a tight loop; status says the ban is not in the kernel. Real time: the
    retries are real nft runs, which virtual time would jump past (tests/timing.py)."""
    script, calls = failing_nft(tmp_path)
    clock = SystemClock()

    async def main() -> Bans:
        bans = book(tmp_path, clock, nft=str(script), reconcile=30.0)
        bans.backoff = Backoff(0.05, 0.4)
        bans.request("203.0.113.7", "3 refusals", clock.now())
        task = asyncio.create_task(bans.run())
        await asyncio.sleep(2.0)  # pauses of ~0.04, 0.08, 0.15, 0.3, then 0.2-0.4: ~8 tries
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return bans

    bans = asyncio.run(main())
    tries = len(calls.read_text().splitlines())
    assert 4 <= tries <= 15, tries
    status = bans.status()
    assert status["last_error"] == "nft: Could not process rule: Device or resource busy"
    kernel = status["kernel"]
    assert isinstance(kernel, dict)
    assert kernel["in_sync"] is False
    assert kernel["missing"] == 1
    assert [n.action for n in bans.notes].count("unenforced") == 1  # once, not at every retry


# -- the fleet's bans (daemon/fleet.py hands the book each look's view) -------------------

HOSTS = ("host-a",)


def view(*targets: str, until: float = 5000.0, hosts: tuple[str, ...] = HOSTS) -> View:
    return View(bans={t: FleetBan(hosts, until) for t in targets})


def test_a_fleet_ban_is_followed_recorded_and_noted_apart(tmp_path: Path) -> None:
    """A look's ban is made here (queued for the kernel), saved with its hosts in its
    reason, counted as a fleet ban and noted for the digest, and never announced back."""
    bans = book(tmp_path, SystemClock(), follow=True)
    bans.follow(view("203.0.113.7"), 1000.0)
    ban = bans.policy.active["203.0.113.7"]
    assert (ban.origin, ban.hosts, ban.until) == ("fleet", HOSTS, 5000.0)
    assert bans._to_add == {"203.0.113.7": 5000.0}
    assert (bans.stats.fleet_bans, bans.stats.bans) == (1, 0)
    assert [(n.action, n.reason) for n in bans.notes] == [("banned", "fleet: banned on host-a")]
    assert bans.fleet.take_changed() == []  # no echo
    assert bans.store.commit()
    (row,) = bans.store.bans()
    assert row.reason == "fleet: banned on host-a"
    status = bans.status()["fleet"]
    assert isinstance(status, dict)
    assert (status["active"], status["added"], status["hosts"]) == (1, 1, ["host-a"])


def test_a_fleet_ban_the_fleet_no_longer_holds_is_lifted(tmp_path: Path) -> None:
    """A look without it: lifted here, queued to leave the kernel, counted as ended (not
    as lifted by hand), its note naming its hosts."""
    bans = book(tmp_path, SystemClock(), follow=True)
    bans.follow(view("203.0.113.7"), 1000.0)
    bans.follow(view(), 1015.0)
    assert bans.policy.active == {}
    assert bans._to_delete == {"203.0.113.7"}
    assert (bans.stats.fleet_ended, bans.stats.bans_lifted) == (1, 0)
    assert bans.notes[-1].reason == "fleet: banned on host-a; the fleet lifted it"


def test_a_refused_fleet_ban_is_counted_once(tmp_path: Path) -> None:
    """This host's own address is refused at the first look and remembered: the next looks
    neither count nor note it again; the refusal is not this host's ban stage's."""
    bans = book(tmp_path, SystemClock(), follow=True)
    for now in (1000.0, 1015.0, 1030.0):
        bans.follow(view("192.0.2.10"), now)
    assert bans.stats.fleet_refused == {"allowlisted": 1}
    assert bans.stats.bans_refused == {}
    assert [n.action for n in bans.notes] == ["refused"]
    assert "192.0.2.10" not in bans.policy.settled


def test_a_network_wider_than_this_host_bans_is_refused_as_wide(tmp_path: Path) -> None:
    """A peer's /24 (a ban by hand there, with --force) is no ban here."""
    bans = book(tmp_path, SystemClock(), follow=True)
    wide = View(wide={"203.0.113.0/24": FleetBan(HOSTS, 5000.0)})
    bans.follow(wide, 1000.0)
    bans.follow(wide, 1015.0)
    assert bans.policy.active == {}
    assert bans.stats.fleet_refused == {"wide": 1}


def test_ban_del_of_a_fleet_ban_keeps_it_lifted_while_the_fleet_keeps_it(tmp_path: Path) -> None:
    """`ban del`: lifted by hand, and the same fleet ban is not followed again; a new one
    (a later end: another host banned it anew) is."""
    bans = book(tmp_path, SystemClock(), follow=True, mode="dry-run")
    bans.follow(view("203.0.113.7"), 1000.0)
    assert asyncio.run(bans.remove("203.0.113.7")) == "203.0.113.7"
    assert bans.stats.bans_lifted == 1
    bans.follow(view("203.0.113.7"), 1015.0)
    assert bans.policy.active == {}
    bans.follow(view("203.0.113.7", until=9000.0), 1030.0)
    assert bans.policy.active["203.0.113.7"].until == 9000.0
    assert bans.fleet.exceptions == {}


def test_ban_del_of_a_fleet_ban_past_a_year_keeps_it_lifted(tmp_path: Path) -> None:
    """A fleet ban ending past the year this host keeps one (a leaked credential's ban for
    ten years) is held here for a year; `ban del` of it still holds while the fleet keeps
    it, although the fleet's end lies past the one held here."""
    bans = book(tmp_path, SystemClock(), follow=True, mode="dry-run")
    decade = 1000.0 + 10 * 365 * 86400
    bans.follow(view("203.0.113.7", until=decade), 1000.0)
    assert bans.policy.active["203.0.113.7"].until == 1000.0 + MAX_MANUAL
    assert asyncio.run(bans.remove("203.0.113.7")) == "203.0.113.7"
    for now in (1015.0, 1030.0):
        bans.follow(view("203.0.113.7", until=decade), now)
        assert bans.policy.active == {}
    bans.follow(view(), 1045.0)  # the fleet lifted it: the exception goes too
    assert bans.fleet.exceptions == {}


def test_fleet_bans_come_back_from_the_state_database(tmp_path: Path) -> None:
    """After a restart a fleet ban is a fleet ban again (origin, hosts from its reason);
    this host's own bans are announced to the fleet again."""
    clock = SystemClock()
    now = clock.now()  # `load` expires what ended by the clock's now
    bans = book(tmp_path, clock, follow=True)
    bans.follow(view("203.0.113.7", until=now + 3600, hosts=("host-a", "host-b")), now)
    bans.request("198.51.100.7", "3 refusals", now)
    assert bans.store.commit()
    bans.store.close()
    again = book(tmp_path, clock, follow=True)
    again.load()
    followed = again.policy.active["203.0.113.7"]
    assert (followed.origin, followed.hosts) == ("fleet", ("host-a", "host-b"))
    assert again.policy.followed == {"203.0.113.7"}
    assert [n.target for n in again.fleet.take_changed()] == ["198.51.100.7"]


def test_without_follow_the_fleets_bans_are_ignored_and_lifted(tmp_path: Path) -> None:
    """follow = false: a view changes nothing; a reload to it lifts the fleet bans."""
    bans = book(tmp_path, SystemClock(), follow=True)
    bans.follow(view("203.0.113.7"), 1000.0)
    bans.configure(NftablesSink(NftablesSinkConfig(follow=False)))
    assert bans.policy.active == {}
    bans.follow(view("203.0.113.8"), 1015.0)
    assert bans.policy.active == {}
