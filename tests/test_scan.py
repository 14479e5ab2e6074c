"""The daemon-side scan detector: unit, in the aggregator, and in the running daemon."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    Deliveries,
    Running,
    body,
    event,
    maildir_messages,
    make_config,
    report_through_daemon,
    send_datagrams,
)

from wrapalert.config import DigestConfig, ScanConfig
from wrapalert.daemon.server import Server
from wrapalert.mail import Renderer
from wrapalert.model import Digest, Event, GroupReport, digest_from_json, digest_to_json
from wrapalert.pipeline import scan as scan_mod
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.chain import AggregateStage
from wrapalert.pipeline.scan import ScanDetector, ScanStage
from wrapalert.pipeline.stage import Chain, Flow
from wrapalert.scanrule import ScanRule, ScanSignal, network
from wrapalert.story import scans
from wrapalert.wire import encode

WINDOW = 600.0


def detector() -> ScanDetector:
    return ScanDetector(WINDOW, daemons=3, sources=4)


def test_one_address_trying_three_daemons_within_the_window_signals_once() -> None:
    d = detector()
    assert d.observe("203.0.113.7", "sshd", 0.0) == []
    assert d.observe("203.0.113.7", "sshd", 10.0) == []  # the same daemon again: nothing new
    assert d.observe("203.0.113.7", "in.ftpd", 100.0) == []
    (signal,) = d.observe("203.0.113.7", "in.telnetd", 200.0)
    assert signal.kind == "daemons"
    assert signal.target == "203.0.113.7"
    assert signal.daemons == ("in.ftpd", "in.telnetd", "sshd")
    assert (signal.first, signal.last) == (10.0, 200.0)
    assert "tried 3 daemons" in signal.describe()
    # Within the same window a fourth daemon does not signal again.
    assert d.observe("203.0.113.7", "vsftpd", 300.0) == []
    assert d.found == 1


def test_daemons_spread_wider_than_the_window_do_not_signal() -> None:
    d = detector()
    d.observe("203.0.113.7", "sshd", 0.0)
    d.observe("203.0.113.7", "in.ftpd", 400.0)
    assert d.observe("203.0.113.7", "in.telnetd", 700.0) == []  # sshd is 700 s old
    # ... but a third within 600 s of in.ftpd does.
    assert [s.kind for s in d.observe("203.0.113.7", "vsftpd", 900.0)] == ["daemons"]


def test_a_target_signals_again_after_a_quiet_window() -> None:
    d = detector()
    for t, name in ((0.0, "a"), (1.0, "b"), (2.0, "c")):
        d.observe("192.0.2.1", name, t)
    assert d.found == 1
    for t, name in ((2000.0, "d"), (2001.0, "e"), (2002.0, "f")):
        d.observe("192.0.2.1", name, t)
    assert d.found == 2


def test_many_addresses_in_one_network_signal_a_sweep() -> None:
    d = detector()
    signals = [s for i in range(4) for s in d.observe(f"198.51.100.{i}", "sshd", float(i))]
    assert [(s.kind, s.target, s.sources) for s in signals] == [("sweep", "198.51.100.0/24", 4)]
    v6 = [s for i in range(4) for s in d.observe(f"2001:db8:1:2::{i + 1}", "sshd", float(i))]
    assert [(s.kind, s.target) for s in v6] == [("sweep", "2001:db8:1:2::/64")]
    # Four addresses in four different /24s are no sweep.
    assert not [s for i in range(4) for s in d.observe(f"192.0.{i}.1", "sshd", float(i))]


def test_unknown_addresses_and_networks_are_not_scans() -> None:
    d = detector()
    for name in ("a", "b", "c", "d"):
        assert d.observe("unknown", name, 1.0) == []
    assert network("unknown") is None
    assert network("192.0.2.77") == "192.0.2.0/24"
    assert network("2001:db8::1") == "2001:db8::/64"
    assert network("fe80::1%eth0") == "fe80::/64"


def test_memory_is_bounded_under_a_flood_of_new_sources() -> None:
    d = detector()
    for i in range(3 * scan_mod.MAX_TRACKED):
        d.observe(f"2001:db8:{i:x}::1", "sshd", float(i))
    assert d.tracked <= 2 * scan_mod.MAX_TRACKED
    # Each target keeps at most its threshold of values, however many it sees.
    for i in range(1000):
        d.observe("198.51.100.1", f"daemon{i}", 1e5)
    assert max(len(s.values) for s in d._addrs.values()) <= 3


def test_signal_round_trips_as_plain_text_and_damage_is_refused() -> None:
    signal = ScanSignal("daemons", "203.0.113.7", ("a", "b", "c"), 1, 1.5, 2.5)
    assert ScanSignal.from_tuple(signal.as_tuple()) == signal
    assert ScanSignal.from_tuple(("daemons", "x")) is None
    assert ScanSignal.from_tuple(("bogus", "x", "1", "1.0", "2.0")) is None
    assert ScanSignal.from_tuple(("sweep", "x", "many", "1.0", "2.0")) is None


class Scanned:
    """The aggregate and scan stages chained as the daemon chains them, fed at given times."""

    def __init__(
        self,
        found: list[ScanSignal],
        cfg: DigestConfig,
        max_groups: int = 1000,
        scans: ScanDetector | None = None,
    ) -> None:
        self.aggregator = Aggregator(cfg, max_groups)
        scan = ScanStage(
            scans or detector(), self.aggregator, severity="critical", on_found=found.append
        )
        self.chain = Chain([AggregateStage(self.aggregator, on_due=lambda: None), scan])

    def add(self, event: Event, now: float) -> None:
        self.chain(Flow(replace(event, received=now)))

    def collect(self, now: float) -> list[GroupReport]:
        return self.aggregator.collect(now)


def aggregator(found: list[ScanSignal]) -> Scanned:
    cfg = replace(DigestConfig(), group_wait=10.0, group_interval=300.0, batch_window=0.0)
    return Scanned(found, cfg)


def test_the_group_completing_a_scan_is_marked_and_raised_to_critical() -> None:
    found: list[ScanSignal] = []
    agg = aggregator(found)
    for t, name in ((0.0, "sshd"), (1.0, "in.ftpd"), (2.0, "in.telnetd")):
        for k in range(50):  # a flood per pair: the detector sees each pair once
            agg.add(event(name, "203.0.113.7"), t + k / 100)
    reports = {r.label("daemon"): r for r in agg.collect(100.0)}
    assert len(found) == 1
    marked = reports["in.telnetd"]
    assert marked.severity == "critical"
    assert [ScanSignal.from_tuple(s) for s in marked.scan] == found
    assert reports["sshd"].severity == "warning"
    assert reports["sshd"].scan == ()
    assert sum(r.events for r in reports.values()) == 150  # counts untouched
    # Reported once: the next report of that group carries no stale signal.
    agg.add(event("in.telnetd", "203.0.113.7"), 500.0)
    (again,) = agg.collect(1000.0)
    assert again.scan == ()


def test_untrusted_reports_never_signal_scans() -> None:
    found: list[ScanSignal] = []
    agg = aggregator(found)
    for name in ("a", "b", "c", "d"):
        agg.add(event(name, "203.0.113.7", trusted=False), 1.0)
    assert found == []


def test_a_scan_across_digests_is_found_by_the_daemon_not_by_one_digest() -> None:
    """sshd reported in one digest, ftpd and telnetd in the next: only the daemon sees 3."""
    found: list[ScanSignal] = []
    agg = aggregator(found)
    agg.add(event("sshd", "203.0.113.7"), 0.0)
    first = agg.collect(20.0)
    agg.add(event("in.ftpd", "203.0.113.7"), 30.0)
    agg.add(event("in.telnetd", "203.0.113.7"), 31.0)
    second = agg.collect(50.0)
    assert scans(first) == []
    (listed,) = scans(second)
    assert (listed.target, listed.daemons) == ("203.0.113.7", ("in.ftpd", "in.telnetd", "sshd"))
    digest = Digest("host", 50.0, tuple(second))
    # The signal survives the outbox (JSON) and reaches the mail's headers and text.
    again = digest_from_json(digest_to_json(digest))
    assert again == digest
    msg = Renderer("wrapalert@localhost", ("root@localhost",)).render(again)
    assert msg["X-Wrapalert-Scans"] == "1"
    assert msg["X-Wrapalert-Severity"] == "critical"
    assert "203.0.113.7 tried 3 daemons" in body(msg)


def test_a_group_restored_from_an_older_state_has_no_signal() -> None:
    found: list[ScanSignal] = []
    agg = aggregator(found)
    agg.add(event("sshd", "192.0.2.1"), 0.0)
    state = agg.aggregator.export(("sshd", "192.0.2.1"))
    assert state is not None
    del state["scan"]  # saved before the detector existed
    fresh = aggregator(found)
    fresh.aggregator.restore([state])
    (report,) = fresh.collect(100.0)
    assert isinstance(report, GroupReport)
    assert report.scan == ()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_running_daemon_counts_logs_and_mails_a_scan(sockdir: Path, enabled: bool) -> None:  # noqa: FBT001 - a parameter
    """Three daemons refusing one address: a scan in status and in the mail, or, with
    the detector off, nothing but the three events."""
    cfg = replace(make_config(sockdir, group_wait=0.5), scan=ScanConfig(enabled=enabled))

    async def scenario() -> Server:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            for daemon in ("sshd", "in.ftpd", "in.telnetd"):
                send_datagrams(cfg.daemon.socket, encode({"d": daemon, "a": "203.0.113.7"}))
            await seen.wait_events(3)
        return server

    server = asyncio.run(scenario())
    assert server.status()["scans"] == int(enabled)
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Severity"] == ("critical" if enabled else "warning")
    if enabled:
        assert msg["X-Wrapalert-Scans"] == "1"
        assert "203.0.113.7 tried 3 daemons" in body(msg)


def test_a_reported_group_waking_up_is_seen_again() -> None:
    """sshd and in.ftpd reported long ago; both come back with in.telnetd: the detector
    must see the two old pairs again when their groups wake, or it misses the scan."""
    found: list[ScanSignal] = []
    agg = aggregator(found)
    agg.add(event("sshd", "203.0.113.7"), 0.0)
    agg.add(event("in.ftpd", "203.0.113.7"), 1.0)
    assert len(agg.collect(20.0)) == 2
    for t, name in ((1000.0, "sshd"), (1001.0, "in.ftpd"), (1002.0, "in.telnetd")):
        agg.add(event(name, "203.0.113.7"), t)
    assert [s.daemons for s in found] == [("in.ftpd", "in.telnetd", "sshd")]
    assert found[0].first == 1000.0


def test_sources_rolled_up_by_network_are_left_to_the_roll_up() -> None:
    found: list[ScanSignal] = []
    cfg = replace(DigestConfig(), group_wait=10.0, batch_window=0.0)
    small = Scanned(found, cfg, 4)
    for i in range(4):
        small.add(event("sshd", f"192.{i}.2.1"), 0.0)  # the exact groups are all taken
    for i in range(20):
        small.add(event("sshd", f"198.51.100.{i}"), 1.0)
    assert found == []
    assert [r.level for r in small.collect(100.0) if r.events == 20] == ["network"]
    large = Scanned(found, cfg)
    for i in range(20):
        large.add(event("sshd", f"198.51.100.{i}"), 1.0)
    assert [(s.kind, s.target) for s in found] == [("sweep", "198.51.100.0/24")]


def test_an_event_completing_two_scans_carries_both_into_the_digest() -> None:
    """An address trying its third daemon just as its /24 signals a sweep again (it had
    been trimmed from the network's list): the digest lists both, not only the last."""
    found: list[ScanSignal] = []
    cfg = replace(DigestConfig(), group_wait=10.0, group_interval=300.0, batch_window=0.0)
    agg = Scanned(found, cfg, scans=ScanDetector(WINDOW, daemons=3, sources=2))
    x = "203.0.113.100"
    steps = [
        (0, "ssh", "203.0.113.1"),
        (1, "ssh", "203.0.113.2"),  # the /24's sweep signalled
        (300, "a", x),
        (301, "b", x),  # x: two daemons
        (302, "ssh", "203.0.113.3"),
        (303, "ssh", "203.0.113.4"),  # x trimmed from the network's list
        (700, "c", x),  # x's third daemon, and the /24 swept again after a quiet window
    ]
    for t, name, addr in steps:
        agg.add(event(name, addr), float(t))
        agg.collect(float(t))
    assert [s.kind for s in found if s.last == 700.0] == ["daemons", "sweep"]
    reports = agg.collect(720.0)
    (marked,) = [r for r in reports if r.key == ("c", x)]
    assert len(marked.scan) == 2
    targets = {s.target for s in scans(reports)}
    assert {x, "203.0.113.0/24"} <= targets
    again = digest_from_json(digest_to_json(Digest("h", 720.0, tuple(reports))))
    assert {s.target for s in scans(list(again.groups))} == targets


def test_the_rule_counts_distinct_values_within_the_window() -> None:
    """A scan needs the kind's threshold of values last seen within `window` of now."""
    rule = ScanRule(window=600.0, daemons=3, sources=16)
    assert (rule.threshold("daemons"), rule.threshold("sweep")) == (3, 16)
    seen = {"sshd": 100.0, "in.ftpd": 200.0, "in.telnetd": 700.0}
    assert rule.reached("daemons", seen, 700.0)  # 100 s is exactly 600 s old: still in
    assert not rule.reached("daemons", seen, 701.0)
    assert not rule.reached("sweep", {f"192.0.2.{i}": 0.0 for i in range(15)}, 0.0)
    assert rule.reached("sweep", {f"192.0.2.{i}": 0.0 for i in range(16)}, 0.0)
    with pytest.raises(ValueError, match="unknown scan kind"):
        rule.threshold("portscan")


def test_the_rule_counts_sweeps_per_24_and_64() -> None:
    """A sweep is counted in the address's /24 or /64; "unknown" is in no network."""
    assert network("198.51.100.77") == "198.51.100.0/24"
    assert network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert network("fe80::1%eth0") == "fe80::/64"
    assert network("unknown") is None


def test_scan_config_is_the_rule_the_detector_runs() -> None:
    """`[scan]` makes one ScanRule; a detector built for it counts by exactly those numbers."""
    cfg = ScanConfig(window=60.0, daemons=2, sources=5)
    assert cfg.rule == ScanRule(60.0, 2, 5)
    d = ScanDetector.for_rule(cfg.rule)
    assert d.rule == cfg.rule
    d.observe("203.0.113.7", "sshd", 0.0)
    assert [s.kind for s in d.observe("203.0.113.7", "in.ftpd", 59.0)] == ["daemons"]


def test_digest_lists_as_scans_what_the_running_daemon_counted(sockdir: Path) -> None:
    """Refusals the digest's old private rule (2 daemons, 4 addresses of a /24) called three
    scans, of which `[scan]` (3 daemons, 16 addresses) makes one: the mail's
    X-Wrapalert-Scans and lead block say what `status` counts."""
    cfg = replace(make_config(sockdir, group_wait=60.0), scan=ScanConfig(daemons=3, sources=16))
    refusals = [
        *(("sshd", "203.0.113.7"), ("in.ftpd", "203.0.113.7"), ("vsftpd", "203.0.113.7")),
        *(("sshd", "192.0.2.9"), ("in.ftpd", "192.0.2.9")),  # two daemons: no scan
        *(("sshd", f"198.51.100.{i}") for i in (3, 40, 77, 200)),  # four of a /24: no sweep
    ]
    server = report_through_daemon(cfg, refusals)
    (msg,) = maildir_messages(sockdir / "Maildir")  # every group flushed at the stop
    assert msg["X-Wrapalert-Events"] == str(len(refusals))
    assert server.status()["scans"] == 1
    assert msg["X-Wrapalert-Scans"] == str(server.status()["scans"])
    told = [line for line in body(msg).splitlines() if line.startswith(("SCAN ", "SWEEP "))]
    assert told == ["SCAN        203.0.113.7 tried 3 daemons, 3 refused: in.ftpd, sshd, vsftpd"]
