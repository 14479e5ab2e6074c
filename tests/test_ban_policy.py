"""The ban policy alone (daemon/banpolicy.py): what is banned, refused, lifted and when it
ends, decided on a manual clock with a real shield over a test host and session dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import LOGIND_SESSION
from timing import ManualClock

from wrapalert.banrule import BanRule, normalise_allow
from wrapalert.daemon import banpolicy
from wrapalert.daemon.banpolicy import Ban, BanPolicy, BanRefusedError, Refusal
from wrapalert.shield import Shield

HOST = "192.0.2.10"  # this host's address, to the shield
PEER = "203.0.113.50"  # LOGIND_SESSION's remote peer


def policy(tmp_path: Path, **rule: object) -> BanPolicy:
    """A policy for `rule`, on a host at HOST with an empty session directory."""
    (tmp_path / "sessions").mkdir(exist_ok=True)
    shield = Shield(lambda: (HOST,), tmp_path / "sessions", tmp_path / "utmp")
    if "allow" in rule:  # as config gives it: parsed once, into networks
        rule["allow"] = normalise_allow(rule["allow"])  # type: ignore[arg-type]
    return BanPolicy(shield, BanRule(**rule))  # type: ignore[arg-type]


def log_in(tmp_path: Path) -> None:
    (tmp_path / "sessions" / "c2").write_text(LOGIND_SESSION)


def test_a_request_bans_for_ban_for_once(tmp_path: Path) -> None:
    """A first request bans the target for `ban_for`; asking again while it holds is None."""
    clock = ManualClock()
    rules = policy(tmp_path, ban_for=600.0)
    ban = rules.decide("198.51.100.7", "10 refusals", clock.now())
    assert ban == Ban("198.51.100.7", "10 refusals", clock.now(), clock.now() + 600.0)
    assert rules.settled == {"198.51.100.7": clock.now() + 600.0}
    assert rules.decide("198.51.100.7", "10 refusals", clock.now() + 1) is None


def test_refusals_say_why_and_how_long_they_hold(tmp_path: Path) -> None:
    """The allowlist and this host's address are refused for ban_for; a session's peer and
    a full book (max_bans) only for a window, since a session ends and a slot may free."""
    now = ManualClock().now()
    rules = policy(tmp_path, allow=("198.51.100.0/24",), max_bans=1, window=60.0, ban_for=900.0)
    log_in(tmp_path)
    assert isinstance(rules.decide("203.0.113.1", "3 refusals", now), Ban)  # the one slot
    refusals = [
        rules.decide(t, "3 refusals", now) for t in ("198.51.100.9", HOST, PEER, "2001:db8::")
    ]
    assert all(isinstance(r, Refusal) for r in refusals)
    assert [(r.why, r.until - now) for r in refusals if isinstance(r, Refusal)] == [
        ("allowlisted", 900.0),
        ("allowlisted", 900.0),
        ("session", 60.0),
        ("cap", 60.0),
    ]
    session = refusals[2]
    assert isinstance(session, Refusal)
    assert session.detail == f"logged in from {PEER}: root via sshd (session c2)"
    # A refused target is settled: the stage stops counting it until the refusal ends.
    assert set(rules.settled) == {"203.0.113.1", "198.51.100.9", HOST, PEER, "2001:db8::"}


def test_bans_and_refusals_end_at_their_time(tmp_path: Path) -> None:
    """`due` hands back the bans that ended and forgets refusals past their time; nothing
    earlier."""
    clock = ManualClock()
    rules = policy(tmp_path, window=60.0, ban_for=600.0)
    rules.decide("198.51.100.7", "10 refusals", clock.now())
    rules.decide(HOST, "10 refusals", clock.now())  # refused for ban_for as well
    log_in(tmp_path)
    rules.decide(PEER, "10 refusals", clock.now())  # refused for a window
    clock.t += 60.0
    assert rules.due(clock.now()) == []
    assert PEER not in rules.settled
    assert PEER not in rules.refused
    clock.t += 540.0
    (ended,) = rules.due(clock.now())
    assert ended.target == "198.51.100.7"
    assert rules.settled == {}
    assert rules.active == {}
    assert rules.soonest() is None


def test_remembered_refusals_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_REFUSED remembered refusals the oldest is forgotten (and counted again by
    the stage), so a flood of allowlisted sources costs bounded memory."""
    monkeypatch.setattr(banpolicy, "MAX_REFUSED", 4)
    rules = policy(tmp_path, allow=("198.51.100.0/24",))
    for i in range(6):
        rules.decide(f"198.51.100.{i}", "10 refusals", 1.0)
    assert list(rules.refused) == [f"198.51.100.{i}" for i in range(2, 6)]
    assert set(rules.settled) == set(rules.refused)


def test_dry_run_bans_are_noted_never_for_the_kernel(tmp_path: Path) -> None:
    """In dry-run a ban is decided and recorded as such; the kernel is to hold none."""
    rules = policy(tmp_path, mode="dry-run")
    ban = rules.decide("198.51.100.7", "10 refusals", 1.0)
    assert isinstance(ban, Ban)
    assert ban.dry_run
    assert rules.kernel_bans() == {}


@pytest.mark.parametrize(
    ("text", "seconds", "refusal"),
    [
        ("198.51.100.7", 0.0, "more than 0 seconds and at most a year"),
        ("198.51.100.7", 400 * 86400.0, "at most a year"),
        ("not an address", None, "is not an IP address"),
        ("198.51.100.0/24", None, "IPv4 bans are single addresses"),
        ("192.0.2.200", None, "allowlisted: it is never banned"),
        (HOST, None, "this host's address"),
        (PEER, None, "--force bans it"),
    ],
)
def test_a_ban_by_hand_is_refused_with_the_reason(
    tmp_path: Path, text: str, seconds: float | None, refusal: str
) -> None:
    """`ban add` is refused, naming why (and the way out, where there is one), before
    anything is recorded."""
    rules = policy(tmp_path, allow=("192.0.2.128/25",))
    log_in(tmp_path)
    with pytest.raises(BanRefusedError, match=refusal):
        rules.by_hand(text, seconds, 1.0, force=False)
    assert rules.active == {}


def test_force_bans_a_sessions_peer_by_hand_but_not_past_the_cap(tmp_path: Path) -> None:
    """--force bans a logged-in peer (its session goes on); the cap holds for bans by hand
    too, and a ban by hand is not recorded until the kernel has it."""
    rules = policy(tmp_path, max_bans=1, ban_for=600.0)
    log_in(tmp_path)
    ban = rules.by_hand(PEER, None, 1.0, force=True)
    assert (ban.reason, ban.until) == ("by hand", 601.0)
    assert rules.active == {}
    rules.record(ban)
    with pytest.raises(BanRefusedError, match=r"max_bans \(1\) reached"):
        rules.by_hand("198.51.100.7", 60.0, 1.0, force=False)


def test_bans_the_rule_would_not_make_are_found(tmp_path: Path) -> None:
    """An allowlist entry added since, and an automatic ban of a NAT64 network, make bans
    to lift; a network banned by hand stays."""
    rules = policy(tmp_path, allow=("198.51.100.9",))
    for target, reason in (
        ("64:ff9b::/64", "10 refusals"),
        ("198.51.100.9", "10 refusals"),
        ("2002::/16", "by hand"),
        ("203.0.113.7", "10 refusals"),
    ):
        rules.record(Ban(target, reason, 1.0, 4e9))
    assert {(b.target, why) for b, why in rules.forbidden()} == {
        ("64:ff9b::/64", "a network of NAT64, Teredo or 6to4 addresses"),
        ("198.51.100.9", "allowlisted"),
    }


def test_what_the_kernel_holds_is_adopted_when_the_book_is_lost(tmp_path: Path) -> None:
    """Bans found in the kernel and unknown to the book join it with their time left."""
    rules = policy(tmp_path)
    rules.record(Ban("203.0.113.7", "10 refusals", 1.0, 100.0))
    rules.adopt({"203.0.113.7": 5.0, "198.51.100.7": 30.0}, 10.0)
    assert rules.active["203.0.113.7"].until == 100.0  # the book's own stays as it was
    adopted = rules.active["198.51.100.7"]
    assert (adopted.reason, adopted.until) == ("found in the kernel", 40.0)
    assert rules.kernel_bans() == {"203.0.113.7": 100.0, "198.51.100.7": 40.0}


# -- the fleet's bans --------------------------------------------------------------------

HOSTS = ("host-a", "host-b")


def test_a_fleet_ban_is_followed_with_its_hosts_and_end(tmp_path: Path) -> None:
    """Another host's ban becomes a ban of origin "fleet", naming its hosts, until the
    fleet's end; the same fleet ban asked again changes nothing."""
    now = ManualClock().now()
    rules = policy(tmp_path, ban_for=60.0)
    ban = rules.follow("203.0.113.7", HOSTS, now + 900, now)
    assert ban == Ban(
        "203.0.113.7", "fleet: banned on host-a, host-b", now, now + 900, False, "fleet", HOSTS
    )
    assert isinstance(ban, Ban)
    rules.record(ban)
    assert rules.followed == {"203.0.113.7"}
    assert rules.follow("203.0.113.7", HOSTS, now + 900, now + 5) is None
    later = rules.follow("203.0.113.7", ("host-a",), now + 1200, now + 5)
    assert isinstance(later, Ban)
    assert (later.since, later.until, later.hosts) == (now, now + 1200, ("host-a",))


def test_this_hosts_rules_refuse_a_fleet_ban_and_remember_nothing(tmp_path: Path) -> None:
    """The allowlist, this host's address and a session's peer refuse a fleet ban as they
    refuse a local one; the refusal is not put in `settled`, so this host's own ban stage
    still counts that source's refusals."""
    now = ManualClock().now()
    rules = policy(tmp_path, allow=("198.51.100.0/24",))
    log_in(tmp_path)
    refusals = [rules.follow(t, HOSTS, now + 900, now) for t in ("198.51.100.9", HOST, PEER)]
    assert [r.why for r in refusals if isinstance(r, Refusal)] == [
        "allowlisted",
        "allowlisted",
        "session",
    ]
    assert rules.settled == {}
    assert rules.refused == {}


def test_fleet_bans_take_at_most_half_of_max_bans(tmp_path: Path) -> None:
    """With max_bans 4 the fleet gets two; this host's own still get the rest."""
    now = ManualClock().now()
    rules = policy(tmp_path, max_bans=4)
    for i in range(2):
        ban = rules.follow(f"203.0.113.{i}", HOSTS, now + 900, now)
        assert isinstance(ban, Ban)
        rules.record(ban)
    third = rules.follow("203.0.113.9", HOSTS, now + 900, now)
    assert isinstance(third, Refusal)
    assert (third.why, third.detail) == ("cap", "fleet bans take at most half of max_bans 4")
    assert isinstance(rules.decide("198.51.100.1", "3 refusals", now), Ban)
    assert isinstance(rules.decide("198.51.100.2", "3 refusals", now), Ban)


def test_a_ban_of_this_hosts_own_stands_against_the_fleets(tmp_path: Path) -> None:
    """A target this host banned itself is not made a fleet ban (nor its end moved); a ban
    by hand of a followed target makes it this host's own."""
    now = ManualClock().now()
    rules = policy(tmp_path)
    own = rules.decide("203.0.113.7", "3 refusals", now)
    assert isinstance(own, Ban)
    assert rules.follow("203.0.113.7", HOSTS, now + 9999, now) is None
    followed = rules.follow("203.0.113.8", HOSTS, now + 900, now)
    assert isinstance(followed, Ban)
    rules.record(followed)
    mine = rules.by_hand("203.0.113.8", None, now, force=False)
    rules.record(mine)
    assert rules.active["203.0.113.8"].origin == "local"
    assert rules.followed == set()


def test_a_fleet_ban_lasts_a_year_at_most(tmp_path: Path) -> None:
    """An endsAt far away (a broken or hostile peer) is cut to a year from the ban's start,
    and stays so at later looks."""
    now = ManualClock().now()
    rules = policy(tmp_path)
    ban = rules.follow("203.0.113.7", HOSTS, now + 1e12, now)
    assert isinstance(ban, Ban)
    assert ban.until == now + banpolicy.MAX_MANUAL
    rules.record(ban)
    assert rules.follow("203.0.113.7", HOSTS, now + 1e12, now + 3600) is None


def test_fleet_bans_are_lifted_once_the_rule_no_longer_follows(tmp_path: Path) -> None:
    """follow = false (a reload): the fleet bans in force are among the forbidden."""
    now = ManualClock().now()
    rules = policy(tmp_path, follow=True)
    ban = rules.follow("203.0.113.7", HOSTS, now + 900, now)
    assert isinstance(ban, Ban)
    rules.record(ban)
    assert rules.forbidden() == []
    rules.rule = BanRule(follow=False)
    assert [(b.target, why) for b, why in rules.forbidden()] == [
        ("203.0.113.7", "the fleet is no longer followed (follow = false)")
    ]
    rules.lift("203.0.113.7")
    assert rules.followed == set()
