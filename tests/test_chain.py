"""The event pipeline as `chain.build` makes it from a config (pipeline/chain.py): which
stages, in which order, each doing its one job; with a real ledger and silence book."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

from timing import ManualClock

from wrapalert import config
from wrapalert.banrule import BanRule
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher
from wrapalert.model import Event
from wrapalert.pipeline import chain
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.ban import BanStage
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.scan import ScanStage

SINKS = '[[sink]]\ntype = "maildir"\npath = "/nonexistent"\n'


class Records:
    """A forwarding sink that keeps what it is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[dict[str, object]] = []

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.records.extend(records)


class Assembled:
    """A pipeline from TOML, with its real ledger and silence book, and forwarders."""

    def __init__(
        self,
        tmp_path: Path,
        toml: str = "",
        forwarders: tuple[str, ...] = (),
        ban: BanStage | None = None,
        previous: chain.EventPipeline | None = None,
    ) -> None:
        self.cfg = config.loads(SINKS + toml)
        self.clock = ManualClock()
        self.ledger = Ledger(Store(tmp_path), self.clock)
        self.silences = Silences(self.ledger.store, self.clock)
        self.due = 0
        self.forwarders = {
            name: ForwardWorker(Records(name), per_second=100.0, clock=self.clock)
            for name in forwarders
        }
        self.pipeline = chain.build(
            self.cfg,
            aggregator=Aggregator(self.cfg.digest, self.cfg.limits.max_groups),
            on_due=self.wake,
            silences=self.silences,
            books=self.ledger,
            forwarders=self.forwarders,
            ban=ban,
            sighter=self.ledger.sightings,
            previous=previous,
        )

    def wake(self) -> None:
        self.due += 1

    def accept(self, daemon: str = "sshd", addr: str = "192.0.2.1") -> None:
        fields = {"daemon": daemon, "client_addr": addr}
        self.pipeline.accept(Event(fields, self.clock.now(), uid=0))

    @property
    def stages(self) -> list[str]:
        return [type(stage).__name__ for stage in self.pipeline.chain.stages]


def test_only_the_stages_the_config_asks_for_are_built(tmp_path: Path) -> None:
    """By default: sightings, silences, aggregate and scan; an [ignore] list, routes and
    forwarding sinks add their stages in the chain's order; `[scan]` off leaves the scan
    stage out."""
    assert Assembled(tmp_path).stages == ["SightStage", "MuteStage", "AggregateStage", "ScanStage"]
    full = Assembled(
        tmp_path,
        '[ignore]\ndaemons = ["in.identd"]\n[[route]]\nmatch = ["daemon=sshd"]\n',
        forwarders=("records",),
    )
    assert full.stages == [
        "SightStage",
        "MuteStage",
        "MuteStage",
        "RouteStage",
        "AggregateStage",
        "ScanStage",
        "ForwardStage",
    ]
    no_scan = Assembled(tmp_path, "[scan]\nenabled = false\n")
    assert no_scan.stages == ["SightStage", "MuteStage", "AggregateStage"]


def test_an_ignored_event_is_ignored_even_when_a_silence_matches(tmp_path: Path) -> None:
    """[ignore] comes before the silences: an event both match counts as ignored; one only
    a silence matches counts as silenced (and for the digest); neither reaches a group."""
    built = Assembled(tmp_path, '[ignore]\ndaemons = ["in.identd"]\n')
    built.silences.add((Matcher.parse("daemon=in.identd"),), 60.0)
    built.silences.add((Matcher.parse("daemon=vsftpd"),), 60.0)
    built.accept("in.identd")
    built.accept("vsftpd")
    built.accept("sshd")
    stats = built.ledger.stats
    assert (stats.ignored, stats.silenced) == (1, 1)
    assert built.silences.take_silenced() == 1
    assert list(built.pipeline.aggregator.groups) == [("sshd", "192.0.2.1")]


def test_muted_events_are_still_remembered_for_explain(tmp_path: Path) -> None:
    """The sight stage comes before every mute: an ignored or silenced source is still one
    `wrapalert explain` knows (a silence hides it from digests, not from explain)."""
    built = Assembled(tmp_path, '[ignore]\ndaemons = ["in.identd"]\n')
    built.silences.add((Matcher.parse("daemon=vsftpd"),), 60.0)
    built.accept("in.identd", "203.0.113.7")
    built.accept("vsftpd", "203.0.113.7")
    found = built.ledger.sightings.about(ip_network("203.0.113.7"))
    assert sorted(s.daemon for s in found) == ["in.identd", "vsftpd"]
    assert built.pipeline.aggregator.groups == {}


def test_the_route_decides_the_group_and_which_sinks_are_offered_the_event(
    tmp_path: Path,
) -> None:
    """A matching route's severity and sinks go to the new group, and only its sinks are
    offered the event; without a match, "warning" and every sink."""
    jsonl = '[[sink]]\ntype = "jsonl"\nname = "{0}"\npath = "/nonexistent/{0}"\n'
    built = Assembled(
        tmp_path,
        jsonl.format("a")
        + jsonl.format("b")
        + '[[route]]\nmatch = ["daemon=vsftpd"]\nseverity = "critical"\nsinks = ["a"]\n',
        forwarders=("a", "b"),
    )
    built.accept("vsftpd")
    built.accept("sshd")
    reports = {r.label("daemon"): r for r in built.pipeline.aggregator.collect(1e6, force=True)}
    assert (reports["vsftpd"].severity, reports["vsftpd"].sinks) == ("critical", ("a",))
    assert (reports["sshd"].severity, reports["sshd"].sinks) == ("warning", None)
    assert [len(f.buffer) for f in built.forwarders.values()] == [2, 1]
    assert built.due == 2  # each new group told the scheduler


def test_the_ban_stage_goes_first_and_keeps_its_counts_over_a_reload(tmp_path: Path) -> None:
    """The ban stage counts before any mute (a silence never shields a source from a ban);
    a reload with the same threshold and window keeps its counts, the scan detector too."""
    asked: list[str] = []
    rule = BanRule(threshold=3)

    def ban_stage() -> BanStage:
        return BanStage(rule, {}, lambda target, _reason, _now: asked.append(target))

    first = Assembled(tmp_path, ban=ban_stage())
    assert first.stages[:2] == ["SightStage", "BanStage"]
    first.silences.add((Matcher.parse("daemon=sshd"),), 3600.0)
    fields = {"daemon": "sshd", "client_addr": "203.0.113.7"}
    tcp = Event(fields, first.clock.now(), uid=0, transport="tcp")
    first.pipeline.accept(tcp)
    first.pipeline.accept(tcp)
    second = Assembled(tmp_path, ban=ban_stage(), previous=first.pipeline)
    second.pipeline.accept(tcp)
    assert asked == ["203.0.113.7"]
    assert first.pipeline.scan is not None
    assert isinstance(second.pipeline.scan, ScanStage)
    assert second.pipeline.scan.detector is first.pipeline.scan.detector
