"""What the daemon remembers of each recent source for `wrapalert explain` (daemon/
sightings.py): counts per daemon and trust with their transports, three bounded memories
that one kind of report cannot empty for another, scans, and the copy a stop saves."""

from __future__ import annotations

import ipaddress
import json

import pytest
from helpers import event

from wrapalert.daemon import sightings
from wrapalert.daemon.sightings import OTHER, Sightings
from wrapalert.scanrule import ScanSignal


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def test_reports_are_counted_per_daemon_and_trust_with_their_transports() -> None:
    """Two verified and one udp refusal by sshd, one untrusted report: counts, first and
    last seen, and the latest values a silence may match."""
    seen = Sightings()
    seen.saw(event("sshd", "203.0.113.7", at=10.0, transport="tcp"))
    seen.saw(event("sshd", "203.0.113.7", at=20.0, transport="tcp", client_name="x.example"))
    seen.saw(event("sshd", "203.0.113.7", at=30.0, transport="udp"))
    seen.saw(event("in.ftpd", "203.0.113.7", at=40.0, trusted=False))
    seen.saw(event("sshd", "203.0.113.8", at=50.0, transport="tcp"))
    rows = {
        (s.daemon, s.trusted, s.tcp, s.udp, s.unknown): (s.count, s.first, s.last)
        for s in seen.about(net("203.0.113.7"))
    }
    assert rows == {
        ("sshd", True, 2, 0, 0): (2, 10.0, 20.0),  # verified
        ("sshd", True, 0, 1, 0): (1, 30.0, 30.0),  # unverified: its own memory
        ("in.ftpd", False, 0, 0, 1): (1, 40.0, 40.0),
    }
    verified = next(s for s in seen.about(net("203.0.113.7")) if s.tcp)
    assert verified.get("client_name") == "x.example"
    assert verified.get("client_addr") == "203.0.113.7"
    assert {s.addr for s in seen.about(net("203.0.113.0/24"))} == {"203.0.113.7", "203.0.113.8"}


def test_one_kind_of_report_cannot_push_out_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of untrusted reports (any local user) or of forged udp sources turns over
    its own memory only: the verified source stays; within one memory the least recently
    seen goes first."""
    monkeypatch.setattr(sightings, "MAX_VERIFIED", 2)
    monkeypatch.setattr(sightings, "MAX_UNVERIFIED", 2)
    monkeypatch.setattr(sightings, "MAX_UNTRUSTED", 2)
    seen = Sightings()
    seen.saw(event(addr="203.0.113.7", transport="tcp"))
    for i in range(100):
        seen.saw(event(addr=f"198.51.100.{i}", trusted=False))
        seen.saw(event(addr=f"192.0.2.{i}", transport="udp"))
    assert [s.addr for s in seen.about(net("203.0.113.7"))] == ["203.0.113.7"]
    assert len(seen) == 5
    seen.saw(event(addr="203.0.113.8", transport="tcp"))
    seen.saw(event(addr="203.0.113.7", transport="tcp"))  # seen again: now the newest
    seen.saw(event(addr="203.0.113.9", transport="tcp"))
    assert {s.addr for s in seen.about(net("203.0.113.0/24"))} == {"203.0.113.7", "203.0.113.9"}


def test_daemons_past_the_bound_fold_into_one_entry() -> None:
    """A source refused by more daemons than MAX_DAEMONS keeps the first ones by name and
    counts the rest together."""
    seen = Sightings()
    for i in range(sightings.MAX_DAEMONS + 3):
        seen.saw(event(f"d{i}", "203.0.113.7", transport="tcp"))
    rows = {s.daemon: s.count for s in seen.about(net("203.0.113.7"))}
    assert len(rows) == sightings.MAX_DAEMONS
    assert rows[OTHER] == 4


def test_an_address_is_found_with_or_without_its_zone_and_unknown_is_not_kept() -> None:
    """A link-local source with a zone answers a question without it; "unknown" (no
    address) is nothing explain could be asked about."""
    seen = Sightings()
    seen.saw(event(addr="fe80::1%eth0", transport="tcp"))
    seen.saw(event(addr="unknown"))
    assert [s.addr for s in seen.about(net("fe80::1"))] == ["fe80::1%eth0"]
    assert len(seen) == 1


def test_scans_are_found_by_address_and_sweeps_by_network() -> None:
    """A scan of the address and a sweep of its /24 are about it; a sweep elsewhere is not."""
    seen = Sightings()
    scan = ScanSignal("daemons", "203.0.113.7", ("ftpd", "sshd"), 1, 1.0, 2.0)
    sweep = ScanSignal("sweep", "203.0.113.0/24", ("sshd",), 5, 1.0, 2.0)
    other = ScanSignal("sweep", "198.51.100.0/24", ("sshd",), 5, 1.0, 2.0)
    for signal in (scan, sweep, other):
        seen.scan(signal)
    assert seen.scans_about(net("203.0.113.7")) == [scan, sweep]


def test_what_a_stop_saves_comes_back_and_damage_costs_only_the_memory() -> None:
    """export() through JSON and restore() give the same answers and the same `since`; a
    damaged copy is refused whole (False), the memory as it was."""
    seen = Sightings(now=5.0)
    seen.saw(event("sshd", "203.0.113.7", at=10.0, transport="tcp", user="root"))
    seen.saw(event("in.ftpd", "2001:db8::7", at=11.0, trusted=False))
    seen.scan(ScanSignal("daemons", "203.0.113.7", ("ftpd", "sshd"), 1, 1.0, 2.0))
    again = Sightings()
    assert again.restore(json.loads(json.dumps(seen.export())))
    assert again.since == 5.0
    everything = net("::/0"), net("0.0.0.0/0")
    for where in everything:
        assert again.about(where) == seen.about(where)
    assert again.scans_about(net("203.0.113.7")) == seen.scans_about(net("203.0.113.7"))
    damaged: list[object] = [
        {"since": "x"},
        {"since": 1, "memories": {"verified": [[1]]}},
        [],
        None,
    ]
    for data in damaged:
        assert seen.restore(data) is False
    assert len(seen) == 2
