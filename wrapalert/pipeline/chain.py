"""The event pipeline, built once from a validated Config: sight -> [ban] -> mute ->
route -> aggregate -> scan -> forward, each a `Stage` (pipeline/stage.py).

Intake hands every accepted event to `EventPipeline.accept`. `build` derives the
stages from the Config around the parts it is given (the aggregator, the silence
book, the books that count, the forwarders, the ban stage); with `previous` (a
reload) the scan detector's and the ban stage's memories carry over where they
count by the same rule. Stages that could do nothing are left out of the chain
(no routes: no route stage; no ignore lists: no ignore stage; no forwarding
sinks: no forward stage; `[scan]` off: no scan stage), so the per-event cost is
what the configuration asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from wrapalert.config import Config
from wrapalert.model import Event
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.ban import BanStage
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.mute import Mute, Muter
from wrapalert.pipeline.route import Router
from wrapalert.pipeline.scan import ScanDetector, ScanStage
from wrapalert.pipeline.stage import Chain, Flow, Stage
from wrapalert.scanrule import ScanSignal


class Books(Protocol):
    """Where the stages count what they stop or find (daemon/ledger.py's Ledger)."""

    def muted(self, why: str) -> None:
        """An event muted: "ignored" ([ignore]) or "silenced" (a silence)."""
        ...

    def scan_found(self, found: ScanSignal) -> None: ...


class Sighter(Protocol):
    """What remembers each recent source for `wrapalert explain` (daemon/sightings.py)."""

    def saw(self, event: Event) -> None: ...


class SightStage:
    """Every accepted event, muted ones too, is remembered for explain; none stops here."""

    __slots__ = ("saw",)

    def __init__(self, sighter: Sighter) -> None:
        self.saw = sighter.saw

    def __call__(self, flow: Flow) -> Flow:
        self.saw(flow.event)
        return flow


class MuteStage:
    """One `Muter`: a muted event stops here, counted by why."""

    __slots__ = ("muter", "on_muted", "why")

    def __init__(self, muter: Muter, why: str, on_muted: Callable[[str], None]) -> None:
        self.muter = muter
        self.why = why
        self.on_muted = on_muted

    def __call__(self, flow: Flow) -> Flow | None:
        muter = self.muter
        if not muter.active:  # silences come and go at run time: asked per event, cheaply
            return flow
        if not muter.mutes(flow.event, flow.event.received):
            return flow
        self.on_muted(self.why)
        return None


class RouteStage:
    """[[route]]: the first matching route sets the severity and the sinks."""

    __slots__ = ("route",)

    def __init__(self, router: Router) -> None:
        self.route = router.route

    def __call__(self, flow: Flow) -> Flow:
        flow.route = self.route(flow.event)
        return flow


class AggregateStage:
    """Counts the event into its group; `on_due` hears when a group's timer may move up.
    Marks the flow when the event started or woke an exact group (for the scan stage)."""

    __slots__ = ("add", "on_due")

    def __init__(self, aggregator: Aggregator, on_due: Callable[[], None]) -> None:
        self.add = aggregator.add
        self.on_due = on_due

    def __call__(self, flow: Flow) -> Flow:
        group = self.add(flow.event, flow.event.received, flow.route)
        if group is not None:
            self.on_due()
            # Not rolled-up groups: past max_groups a flood of new sources is what the
            # roll-up itself reports, and per event that would cost the most.
            if group.level == 0:
                flow.woke = group.key
        return flow


class ForwardStage:
    """Offers the event to each forwarding sink its route allows (all, without routes)."""

    __slots__ = ("forwarders",)

    def __init__(self, forwarders: Mapping[str, ForwardWorker]) -> None:
        self.forwarders = forwarders

    def __call__(self, flow: Flow) -> Flow:
        sinks = flow.route.sinks
        for name, forwarder in self.forwarders.items():
            if sinks is None or name in sinks:
                forwarder.offer(flow.event)
        return flow


@dataclass
class EventPipeline:
    """The stages, as built by `build`, and the ones a successor takes memory from."""

    aggregator: Aggregator
    chain: Chain
    ban: BanStage | None = None
    scan: ScanStage | None = None

    def accept(self, event: Event) -> None:
        self.chain(Flow(event))


def build(
    cfg: Config,
    *,
    aggregator: Aggregator,
    on_due: Callable[[], None],
    silences: Muter,
    books: Books,
    forwarders: Mapping[str, ForwardWorker],
    scan_takers: Sequence[ForwardWorker] = (),
    ban: BanStage | None = None,
    sighter: Sighter | None = None,
    previous: EventPipeline | None = None,
) -> EventPipeline:
    """The pipeline for `cfg`. `sighter` (explain's memory) sees every event first. `ban`
    (the nftables sink's stage, pipeline/ban.py) goes next: before mute, so a silence
    hides a source from digests but never shields it from a ban, and before any rate
    limit. `scan_takers`: the forwarders that take "scan" records."""
    stages: list[Stage] = []
    if sighter is not None:
        stages.append(SightStage(sighter))
    if ban is not None:
        ban.carry_over(previous.ban if previous else None)
        stages.append(ban)
    ignore = Mute(cfg.ignore.networks, cfg.ignore.daemons)
    if ignore.active:
        stages.append(MuteStage(ignore, "ignored", books.muted))
    stages.append(MuteStage(silences, "silenced", books.muted))
    router = Router(cfg.routes)
    if router.routes:
        stages.append(RouteStage(router))
    stages.append(AggregateStage(aggregator, on_due))
    scan = None
    if cfg.scan.enabled:
        scan = ScanStage(
            ScanDetector.for_rule(cfg.scan.rule),
            aggregator,
            severity=cfg.scan.severity,
            on_found=books.scan_found,
            forwarders=scan_takers,
        )
        scan.carry_over(previous.scan if previous else None)
        stages.append(scan)
    if forwarders:
        stages.append(ForwardStage(forwarders))
    return EventPipeline(aggregator, Chain(stages), ban, scan)
