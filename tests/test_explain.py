"""`wrapalert explain` (daemon/explain.py): what the daemon knows of a source and what
keeps it from a ban, answered from its real parts; then through the running daemon, in a
private network namespace with the kernel's ban sets, and on an 80x24 screen."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PYTHON, event, require, wait_until
from nftns import UDP_ECHO, Daemons, Netns, elements, require_netns
from timing import ManualClock

from wrapalert import config
from wrapalert.daemon.server import Server
from wrapalert.explainview import SCREEN_LINES, SCREEN_WIDTH, render
from wrapalert.match import Matcher
from wrapalert.netaddr import query_network
from wrapalert.scanrule import ScanSignal

NOW = 1_700_000_000.0


def server(tmp_path: Path, nftables: str | None = 'mode = "dry-run"') -> Server:
    """A daemon's parts, not running: a maildir and (unless None) an nftables sink with
    threshold 3 and 198.51.100.0/24 allowed, on a manual clock."""
    sinks = f'[[sink]]\ntype = "maildir"\npath = "{tmp_path}/Maildir"\n'
    if nftables is not None:
        sinks += (
            f'[[sink]]\ntype = "nftables"\nthreshold = 3\nallow = ["198.51.100.0/24"]\n{nftables}\n'
        )
    cfg = config.loads(f'[daemon]\nstate_dir = "{tmp_path}/state"\n{sinks}')
    daemon = Server(cfg, clock=ManualClock(NOW))
    daemon.store.open()
    return daemon


def report(parts: Server, addr: str, count: int = 1, **kw: Any) -> None:
    """`count` refusals of `addr` accepted as intake hands them on (`kw`: event()'s)."""
    for _ in range(count):
        parts.reloader.accept(event(addr=addr, at=parts.clock.now(), **kw))


def explain(daemon: Server, text: str) -> dict[str, Any]:
    """The answer to `explain TEXT`, the address read as the control API reads it."""
    return daemon.explainer.explain(query_network(text))


def test_a_banned_source_says_its_ban_and_the_command_that_lifts_it(tmp_path: Path) -> None:
    """Three verified refusals: the (dry-run) ban, why, its count and length, `ban del`;
    the refusals by daemon and transport."""
    daemon = server(tmp_path)
    report(daemon, "203.0.113.7", 3, transport="tcp", client_name="scanner.example")
    answer = explain(daemon, "203.0.113.7")
    assert answer["known"] is True
    (verdict,) = answer["verdicts"]
    assert (verdict["state"], verdict["why"]) == ("would be banned (dry-run)", "3 refusals")
    assert verdict["detail"] == "1 h"
    assert verdict["ban"]["lift"] == "wrapalert ban del 203.0.113.7"
    (row,) = answer["refusals"]
    assert (row["daemon"], row["trust"], row["count"], row["tcp"]) == ("sshd", "trusted", 3, 3)
    assert answer["names"] == ["scanner.example"]
    assert [h["bans"] for h in answer["history"]] == [1]


@pytest.mark.parametrize(
    ("addr", "kw", "why", "detail"),
    [
        ("198.51.100.9", {"transport": "tcp"}, "allowlisted", "allow entry 198.51.100.0/24"),
        ("127.0.0.9", {"transport": "tcp"}, "always allowed", "127.0.0.0/8"),
        ("203.0.113.8", {"trusted": False}, "untrusted only", "2 report(s), all from uids"),
        ("203.0.113.9", {"transport": "udp"}, "unverified transport", "(udp 2, unknown 0)"),
        ("203.0.113.10", {"transport": "tcp"}, "below threshold", "2 of 3 verified refusals"),
    ],
)
def test_the_rule_that_keeps_a_source_from_a_ban_is_named_with_its_numbers(
    tmp_path: Path, addr: str, kw: dict[str, Any], why: str, detail: str
) -> None:
    """Two reports each: the allowlist (with its entry), loopback, untrusted senders, no
    handshake behind them, or the threshold not reached (so many of so many, in what)."""
    daemon = server(tmp_path)
    report(daemon, addr, 2, **kw)
    (verdict,) = explain(daemon, addr)["verdicts"]
    assert (verdict["state"], verdict["why"]) == ("not banned", why)
    assert detail in verdict["detail"]
    if why == "below threshold":
        assert verdict["detail"].startswith("2 of 3 verified refusals in the last 10 min")


def test_an_unknown_source_is_not_known_and_still_judged(tmp_path: Path) -> None:
    """Nothing remembered: `known` False (explain exits 1), how much is remembered, and
    what would keep it from a ban all the same."""
    daemon = server(tmp_path)
    report(daemon, "203.0.113.7", transport="tcp")
    answer = explain(daemon, "198.51.100.77")
    assert answer["known"] is False
    assert answer["remembered"] == 1
    assert [v["why"] for v in answer["verdicts"]] == ["allowlisted"]


def test_without_an_nftables_sink_banning_is_said_to_be_off(tmp_path: Path) -> None:
    """No nftables sink: known from its refusals, "no nftables sink" keeps it unbanned."""
    daemon = server(tmp_path, nftables=None)
    report(daemon, "203.0.113.7", 5, transport="tcp")
    answer = explain(daemon, "203.0.113.7")
    assert answer["known"] is True
    assert answer["verdicts"][0]["why"] == "no nftables sink"
    assert answer["mode"] is None


def test_a_network_takes_its_addresses_together(tmp_path: Path) -> None:
    """203.0.113.0/24: both addresses' refusals in one row per daemon and trust, each
    address judged, the banned one first; a scan of one and a sweep of the /24 listed."""
    daemon = server(tmp_path)
    report(daemon, "203.0.113.7", 3, transport="tcp")
    report(daemon, "203.0.113.8", 1, transport="tcp")
    report(daemon, "198.51.100.1", 1, transport="tcp")  # outside
    daemon.ledger.scan_found(ScanSignal("sweep", "203.0.113.0/24", ("sshd",), 2, NOW, NOW))
    answer = explain(daemon, "203.0.113.7/24")
    assert answer["query"] == "203.0.113.0/24"
    assert answer["addresses"] == ["203.0.113.7", "203.0.113.8"]
    (row,) = answer["refusals"]
    assert (row["count"], row["addresses"]) == (4, 2)
    assert [(v["target"], v["why"]) for v in answer["verdicts"]] == [
        ("203.0.113.7", "3 refusals"),
        ("203.0.113.8", "below threshold"),
    ]
    assert [s["kind"] for s in answer["scans"]] == ["sweep"]


def test_an_ipv6_address_is_judged_by_its_network(tmp_path: Path) -> None:
    """An IPv6 source's ban is its /64: a neighbour's refusals count toward the same
    target, and its answer says so."""
    daemon = server(tmp_path)
    report(daemon, "2001:db8::1", 2, transport="tcp")
    report(daemon, "2001:db8::2", 1, transport="tcp")
    (verdict,) = explain(daemon, "2001:db8::2")["verdicts"]
    assert (verdict["target"], verdict["state"]) == ("2001:db8::/64", "would be banned (dry-run)")


def test_silences_that_mute_it_are_listed(tmp_path: Path) -> None:
    """A silence of its network, and one of its daemon, mute it; one of another daemon,
    or of another network, does not."""
    daemon = server(tmp_path)
    report(daemon, "203.0.113.7", 1, transport="tcp")
    for matchers in (["client=203.0.113.0/24"], ["daemon=sshd"], ["daemon=ftpd"], ["client=::/0"]):
        daemon.silences.add(tuple(Matcher.parse(m) for m in matchers), 3600.0, "c")
    silences = explain(daemon, "203.0.113.7")["silences"]
    assert [s["matchers"] for s in silences] == [["client_addr=203.0.113.0/24"], ["daemon=sshd"]]


def test_a_repeat_offender_says_its_past_bans_and_its_next(tmp_path: Path) -> None:
    """After a ban ran out, the answer has the history and the log, and says the next ban
    would be its 2nd, twice as long."""
    daemon = server(tmp_path)
    report(daemon, "203.0.113.7", 3, transport="tcp")
    assert isinstance(daemon.clock, ManualClock)
    daemon.clock.t += 3601.0
    daemon.store.commit()
    answer = explain(daemon, "203.0.113.7")
    (verdict,) = answer["verdicts"]
    assert verdict["next_ban"] == {"nth": 2, "seconds": 7200.0}
    assert [(p["action"], p["target"]) for p in answer["past"]] == [
        ("expired", "203.0.113.7"),
        ("would ban", "203.0.113.7"),
    ]
    assert "a ban now would be its 2nd, 2 h" in render(answer)


# -- on a terminal -----------------------------------------------------------------------


def test_a_busy_answer_fits_80_by_24_and_prints_no_control_bytes(tmp_path: Path) -> None:
    """Twelve daemons, scans, silences and a long log: at most 24 lines of 80 columns, and
    a daemon name carrying an escape sequence is shown with "?" for each control byte."""
    daemon = server(tmp_path)
    for i in range(12):
        report(daemon, "203.0.113.7", 1, daemon=f"d{i}\x1b[31m\u202e", transport="udp")
    report(daemon, "203.0.113.7", 3, transport="tcp", client_name="evil\x07")
    for i in range(5):
        target = f"203.0.113.{i}"
        daemon.ledger.scan_found(ScanSignal("daemons", target, ("a", "b"), 1, NOW, NOW))
        daemon.silences.add((Matcher.parse("client=203.0.113.0/24"),), 60.0, "x\x1b]0;t\x07")
    text = render(explain(daemon, "203.0.113.0/24"))
    lines = text.splitlines()
    assert len(lines) <= SCREEN_LINES
    assert max(map(len, lines)) <= SCREEN_WIDTH
    assert all(c.isprintable() for c in text.replace("\n", ""))
    assert "d0?[31m?" in text  # ESC and the bidi override are gone: nothing to interpret


# -- through the running daemon -----------------------------------------------------------


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[Daemons]:
    require_netns()
    ns = Netns()
    started = Daemons(sockdir, ns)
    yield started
    started.close()
    ns.close()


@pytest.mark.system
def test_explain_through_the_running_daemon(daemon: Daemons) -> None:
    """`wrapalert explain` asks the running daemon: a banned source (in the kernel), an
    allowlisted one, an untrusted-only one, a udp-only one (a real UDP service's refusal:
    unverified) and an unknown one (exit 1); each answer fits 80x24, and --json is the
    whole answer."""
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    d = daemon('allow = ["198.51.100.0/24"]')
    d.report("203.0.113.7", 3)
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the ban")
    d.report("198.51.100.9", 3)
    d.report("203.0.113.8", 2, user=65534)
    udp = d.ns.popen(PYTHON, "-c", UDP_ECHO, "127.0.0.1", "6969")
    try:
        assert udp.stdout is not None
        assert udp.stdout.readline().strip() == "listening"
        d.udp_report("203.0.113.9", "127.0.0.1", 6969, 2)
    finally:
        udp.kill()
        udp.wait()
    expected = {
        "203.0.113.7": (0, "203.0.113.7: BANNED: 3 refusals, until"),
        "198.51.100.9": (0, "not banned: allowlisted: allow entry 198.51.100.0/24"),
        "203.0.113.8": (0, "not banned: untrusted only: 2 report(s)"),
        "203.0.113.9": (0, "not banned: unverified transport: 2 trusted refusal(s)"),
        "192.0.2.99": (1, "192.0.2.99: never heard of it"),
    }
    for addr, (code, words) in expected.items():
        done = d.cli("explain", addr)
        assert done.returncode == code, done.stdout + done.stderr
        assert words in " ".join(done.stdout.split()), done.stdout  # wrapped or not
        lines = done.stdout.splitlines()
        assert len(lines) <= SCREEN_LINES
        assert max(map(len, lines)) <= SCREEN_WIDTH
    banned = d.cli("explain", "203.0.113.7")
    assert "lift it: wrapalert ban del 203.0.113.7" in banned.stdout
    answer = json.loads(d.cli("explain", "203.0.113.9", "--json").stdout)
    assert [(r["trust"], r["udp"], r["tcp"]) for r in answer["refusals"]] == [("trusted", 2, 0)]
    bad = d.cli("explain", "203.0.113.7/33")
    assert bad.returncode == 2
    assert "not an address or a network" in bad.stderr


def test_explain_refuses_what_is_not_an_address_before_asking() -> None:
    """An address argument that is not one is a usage error (exit 2) naming what to
    write; no daemon is needed to say so."""
    done = subprocess.run(
        [PYTHON, "-m", "wrapalert.cli", "explain", "not-an-address"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "write 203.0.113.7, 203.0.113.0/24" in done.stderr
