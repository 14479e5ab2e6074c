"""The scan stage alone (pipeline/scan.py): after the aggregate stage, it shows the
detector the pairs whose event started or woke an exact group, escalates the group that
completes a scan, and fans the signal out to the ledger and the sinks that take scans."""

from __future__ import annotations

from dataclasses import replace

from timing import ManualClock

from wrapalert.config import DigestConfig
from wrapalert.model import Event
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.chain import AggregateStage
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.scan import ScanDetector, ScanStage
from wrapalert.pipeline.stage import Chain, Flow
from wrapalert.scanrule import ScanRule, ScanSignal

CFG = replace(DigestConfig(), group_wait=10.0, group_interval=300.0, batch_window=0.0)
ADDR = "203.0.113.7"


class Records:
    """A forwarding sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.name = "records"
        self.records: list[dict[str, object]] = []

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.records.extend(records)


class Stages:
    """The aggregate and scan stages as the daemon chains them."""

    def __init__(self, max_groups: int = 1000, rule: ScanRule | None = None) -> None:
        self.found: list[ScanSignal] = []
        self.woken = 0
        self.aggregator = Aggregator(CFG, max_groups)
        self.forwarder = ForwardWorker(Records(), per_second=10.0, clock=ManualClock())
        self.scan = ScanStage(
            ScanDetector.for_rule(rule or ScanRule(600.0, 3, 4)),
            self.aggregator,
            severity="critical",
            on_found=self.found.append,
            forwarders=[self.forwarder],
        )
        self.chain = Chain([AggregateStage(self.aggregator, self.wake), self.scan])

    def wake(self) -> None:
        self.woken += 1

    def send(self, daemon: str, at: float, addr: str = ADDR, *, trusted: bool = True) -> Flow:
        flow = Flow(Event({"daemon": daemon, "client_addr": addr}, at, uid=0, trusted=trusted))
        self.chain(flow)
        return flow

    def seen(self, addr: str = ADDR) -> dict[str, float]:
        """The daemons the detector holds for `addr`, with when it last saw each."""
        entry = self.scan.detector._addrs.young.get(addr)
        return {} if entry is None else dict(entry.values)


def test_the_detector_sees_a_pair_when_its_group_starts_or_wakes() -> None:
    """A flood from one source and daemon reaches the detector once (when its group
    starts), and again only when the group wakes after its report."""
    stages = Stages()
    flows = [stages.send("sshd", t / 10) for t in range(50)]
    assert flows[0].woke == ("sshd", ADDR)
    assert all(f.woke is None for f in flows[1:])
    assert stages.seen() == {"sshd": 0.0}  # only the first event's time
    stages.aggregator.collect(20.0)  # reported: the next event wakes it
    stages.send("sshd", 30.0)
    assert stages.seen() == {"sshd": 30.0}
    assert stages.woken == 2


def test_a_completed_scan_escalates_its_group_and_fans_out() -> None:
    """The third daemon's group is marked and raised to the scan severity; the signal is
    counted once and offered to each sink that takes scans as a record of no events."""
    stages = Stages()
    for t, daemon in enumerate(("sshd", "in.ftpd", "in.telnetd")):
        stages.send(daemon, float(t))
    (signal,) = stages.found
    assert (signal.kind, signal.target) == ("daemons", ADDR)
    reports = {r.label("daemon"): r for r in stages.aggregator.collect(100.0)}
    assert reports["in.telnetd"].severity == "critical"
    assert [ScanSignal.from_tuple(s) for s in reports["in.telnetd"].scan] == [signal]
    assert reports["sshd"].severity == "warning"
    (record,) = stages.forwarder.buffer
    assert (record["type"], record["target"], record["kind"]) == ("scan", ADDR, "daemons")
    # The escalation is saved with the group's next commit.
    assert stages.aggregator.changes.groups[("in.telnetd", ADDR)] is not None


def test_untrusted_reports_and_rolled_up_groups_are_not_watched() -> None:
    """Made-up addresses from a local user never reach the detector; nor do sources past
    max_groups, which the roll-up reports as a network."""
    stages = Stages()
    for daemon in ("a", "b", "c", "d"):
        stages.send(daemon, 1.0, trusted=False)
    assert stages.found == []
    assert stages.seen() == {}
    full = Stages(max_groups=2)
    full.send("sshd", 0.0, "192.0.2.1")
    full.send("sshd", 0.0, "192.0.2.2")
    flow = full.send("sshd", 1.0, "198.51.100.1")  # a new group, rolled up to its /24
    assert flow.woke is None
    assert full.seen("198.51.100.1") == {}


def test_a_reload_keeps_what_the_detector_saw_if_the_rule_is_the_same() -> None:
    """carry_over takes the previous stage's detector for the same rule (a scan spread
    over a reload is still found) and not for another rule."""
    old = Stages()
    old.send("sshd", 0.0)
    old.send("in.ftpd", 1.0)
    same = Stages()
    same.scan.carry_over(old.scan)
    same.send("in.telnetd", 2.0)
    assert [s.kind for s in same.found] == ["daemons"]
    other = Stages(rule=ScanRule(600.0, 3, 5))
    other.scan.carry_over(old.scan)
    other.send("in.telnetd", 2.0)
    assert other.found == []
    assert other.seen() == {"in.telnetd": 2.0}
