"""daemon/canaries.py: the canary book expects the refusals `wrapalert canary` makes, claims
them from intake before anything counts them (trusted reports only), and records each
run's verdict with the alarm book: a rule whose event never came is a problem (an
alarm-off), the next run that passes clears it (alarm-on). Every value of a request is
hostile until checked."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from helpers import Into, Mailbox, SinksInForce, canary_book
from timing import VirtualClock, run

from wrapalert.daemon.activity import Activity
from wrapalert.daemon.canaries import ABSORB, MAX_PROBES, Canaries, CanaryError
from wrapalert.daemon.intake import Intake
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.twins import Twins
from wrapalert.daemon.witness import Witness
from wrapalert.model import Event
from wrapalert.wire import encode

PID = 4242
PROBE = {
    "path": "/etc/hosts.deny",
    "line": 3,
    "rule": "ALL : ALL : spawn ( wrapalert-notify d=%d a=%a p=%p ) &",
    "daemon": "sshd",
    "client": "198.51.100.254",
}
REPORT = {"d": "sshd", "a": "198.51.100.254", "p": str(PID), "r": "0"}


def refusal(**fields: str) -> dict[str, str]:
    """The fields intake parsed from the hook's report of the canary's refusal."""
    base = {"daemon": "sshd", "client_addr": "198.51.100.254", "daemon_pid": str(PID)}
    return base | fields


def book(clock: VirtualClock | None = None) -> tuple[Canaries, SinksInForce]:
    """A canary book whose alarm book posts to one mail sink (notices wait in the post)."""
    clock = clock or VirtualClock()
    sinks = SinksInForce({"mail": Mailbox(clock)})
    return canary_book(Stats(), clock, sinks), sinks


def test_a_run_whose_event_arrives_passes() -> None:
    canaries, _ = book()

    async def scenario() -> dict[str, object]:
        started = canaries.start(PID, [PROBE])
        assert canaries.claims(refusal())
        return await canaries.finish(started.id, {}, 5)

    result = run(scenario())
    assert result["passed"] is True
    probes = result["probes"]
    assert isinstance(probes, list)
    (probe,) = probes
    assert probe["where"] == "/etc/hosts.deny line 3"
    assert probe["after"] == 0.0
    assert canaries.stats.canary_events == 1
    assert canaries.status()["ok"] is True
    assert canaries.last_success is not None
    assert canaries.alarm.ok  # type: ignore[attr-defined]


def test_a_missing_event_is_a_problem_naming_the_rule_and_the_next_pass_clears_it() -> None:
    clock = VirtualClock()
    canaries, _ = book(clock)
    alarm = canaries.alarm

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        first = canaries.start(PID, [PROBE])
        failed = await canaries.finish(first.id, {}, 2)
        second = canaries.start(PID + 1, [PROBE])
        assert canaries.claims(refusal(daemon_pid=str(PID + 1)))
        passed = await canaries.finish(second.id, {}, 2)
        return failed, passed

    failed, passed = run(scenario())
    assert failed["passed"] is False
    assert "did not arrive within 2 s" in failed["probes"][0]["why"]  # type: ignore[index]
    assert passed["passed"] is True
    post = alarm.post  # type: ignore[attr-defined]
    kinds = [p.notice.kind for p in post.pending]
    assert kinds == ["alarm-off", "alarm-on"]
    off = post.pending[0].notice
    assert [(p.kind, p.path, p.line) for p in off.problems] == [("canary", "/etc/hosts.deny", 3)]


def test_only_what_a_run_expects_is_claimed_and_never_after_it_is_forgotten() -> None:
    clock = VirtualClock()
    canaries, _ = book(clock)

    async def scenario() -> list[bool]:
        started = canaries.start(PID, [PROBE])
        claims = [
            canaries.claims(refusal(daemon_pid="1")),  # another process's refusal
            canaries.claims(refusal(daemon="in.ftpd")),
            canaries.claims(refusal(client_addr="198.51.100.253")),
            canaries.claims(refusal()),
            canaries.claims(refusal()),  # a late copy (the spool's): still the canary's
        ]
        await canaries.finish(started.id, {}, 1)
        await asyncio.sleep(ABSORB + 1)
        canaries.status()  # forgets what expired
        claims.append(canaries.claims(refusal()))
        return claims

    assert run(scenario()) == [False, False, False, True, True, False]


def intake_with(canaries: Canaries, activity: Activity) -> tuple[Intake, list[Event]]:
    """Intake handing events to a list; uid 0 trusted (handle() is the spool pass's way in)."""
    taken: list[Event] = []
    stats = canaries.stats
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    intake = Intake(
        sock,
        target=Into(taken.append, frozenset({0})),
        stats=stats,
        twins=Twins(),
        witness=Witness(stats, lambda: 0.0),
        canary=canaries,
        activity=activity,
        now=lambda: 1_700_000_000.0,
    )
    return intake, taken


@pytest.mark.parametrize("trusted", [True, False])
def test_intake_hands_a_trusted_canary_refusal_to_the_book_only(trusted: bool) -> None:  # noqa: FBT001
    """A trusted report of the expected refusal stops at the book: not received, not
    counted as a daemon's activity, never an event; the same report from an untrusted uid
    (a local user imitating the canary) is an event like any other."""
    canaries, _ = book()
    canaries.start(PID, [PROBE])
    activity = Activity()
    intake, taken = intake_with(canaries, activity)
    stats = canaries.stats
    try:
        passed = intake.handle(encode(REPORT), uid=0 if trusted else 1000, pid=1, origin="spool")
    finally:
        intake.sock.close()
    if trusted:
        assert (passed, taken, stats.received, stats.canary_events) == (False, [], 0, 1)
        assert activity.last == {}
    else:
        assert passed is True
        assert [e.fields["daemon"] for e in taken] == ["sshd"]
        assert (stats.received, stats.untrusted, stats.canary_events) == (1, 1, 0)


@pytest.mark.parametrize(
    ("pid", "probes", "why"),
    [
        (True, [PROBE], "pid"),
        (-1, [PROBE], "pid"),
        ("4242", [PROBE], "pid"),
        (PID, {"a": 1}, "list of at most"),
        (PID, [PROBE] * (MAX_PROBES + 1), "list of at most"),
        (PID, ["x"], "each probe is an object"),
        (PID, [PROBE | {"client": "example.org"}], "client is an address"),
        (PID, [PROBE | {"line": "3"}], "line is a number"),
        (PID, [PROBE | {"daemon": ""}], "names its daemon"),
        (PID, [PROBE, PROBE], "would look alike"),
    ],
)
def test_hostile_requests_are_refused_saying_why(pid: object, probes: object, why: str) -> None:
    canaries, _ = book()
    with pytest.raises(CanaryError, match=why):
        canaries.start(pid, probes)
    assert canaries.runs == {}


def test_a_finish_for_no_open_run_and_a_bad_timeout_are_refused() -> None:
    canaries, _ = book()

    async def scenario() -> None:
        with pytest.raises(CanaryError, match="no such canary run"):
            await canaries.finish(99, {}, 1)
        started = canaries.start(PID, [PROBE])
        with pytest.raises(CanaryError, match="timeout is a number"):
            await canaries.finish(started.id, {}, "soon")

    run(scenario())


def test_control_characters_in_a_rule_never_reach_the_notice() -> None:
    """A rule's text is the request's: printable only, bounded (it reaches a mail)."""
    canaries, _ = book()

    async def scenario() -> None:
        started = canaries.start(PID, [PROBE | {"path": "/etc/hosts.deny\r\nBcc: x@example.org"}])
        await canaries.finish(started.id, {}, 1)

    run(scenario())
    (problem,) = canaries.alarm.problems()  # type: ignore[attr-defined]
    assert "\r" not in problem.path
    assert "\n" not in problem.path


def test_the_verdict_outlives_a_restart(tmp_path: Path) -> None:
    """Saved in the state database: last run, last success, the failed rules."""
    from wrapalert.daemon.alarm import Alarm  # noqa: PLC0415
    from wrapalert.daemon.notices import Post  # noqa: PLC0415
    from wrapalert.daemon.store import Store  # noqa: PLC0415

    clock = VirtualClock()

    def fresh() -> tuple[Canaries, Store]:
        store = Store(tmp_path / "state", clock.now)
        store.open()
        post = Post(SinksInForce(), store, clock, Stats())
        canaries = Canaries(store, clock, Stats(), Alarm(store, clock, post, "web1"))
        canaries.load()
        return canaries, store

    canaries, store = fresh()

    async def scenario() -> None:
        started = canaries.start(PID, [PROBE])
        canaries.claims(refusal())
        await canaries.finish(started.id, {}, 1)

    run(scenario())
    assert store.commit()
    store.close()
    again, _ = fresh()
    assert (again.last_run, again.last_success, again.failed) == (
        canaries.last_run,
        canaries.last_success,
        [],
    )
