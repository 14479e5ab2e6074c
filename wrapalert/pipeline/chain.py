"""The event pipeline, built once from a validated Config: mute -> route -> aggregate
-> forward, each a `Stage` (pipeline/stage.py).

Intake hands every accepted event to `EventPipeline.accept`. A reload builds a
new pipeline from the new Config and `build(..., previous=old)` hands the state
over through the same export/restore path the state store uses (groups as
plain data, silences as records); the scan detector's memory is kept when
`[scan]` is unchanged. Stages that could do nothing are left out of the chain
(no routes: no route stage; no forwarding sinks: no forward stage), so the
per-event cost is what the configuration asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wrapalert.config import Config, ScanConfig
from wrapalert.model import Event
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.mute import Mute
from wrapalert.pipeline.route import Router
from wrapalert.pipeline.scan import ScanDetector
from wrapalert.pipeline.stage import Chain, Flow, Stage
from wrapalert.scanrule import ScanSignal

MutedHook = Callable[[str], None]  # "ignored" or "silenced"


class MuteStage:
    """[ignore] lists and silences: a muted event stops here, counted by why."""

    __slots__ = ("mute", "on_muted", "silenced")

    def __init__(self, mute: Mute, on_muted: MutedHook) -> None:
        self.mute = mute
        self.on_muted = on_muted
        self.silenced = 0  # since the last digest, which says how many

    def __call__(self, flow: Flow) -> Flow | None:
        mute = self.mute
        if not mute.active:  # silences come and go at run time: asked per event, cheaply
            return flow
        verdict = mute.classify(flow.event, flow.event.received)
        if verdict is None:
            return flow
        if verdict == "silenced":
            self.silenced += 1
        self.on_muted(verdict)
        return None

    def take_silenced(self) -> int:
        """Events silenced since the last call (one digest's worth)."""
        count, self.silenced = self.silenced, 0
        return count


class RouteStage:
    """[[route]]: the first matching route sets the severity and the sinks."""

    __slots__ = ("route",)

    def __init__(self, router: Router) -> None:
        self.route = router.route

    def __call__(self, flow: Flow) -> Flow:
        flow.severity, flow.sinks = self.route(flow.event)
        flow.routed = True
        return flow


class AggregateStage:
    """Counts the event into its group; `on_due` hears when a group's timer may move up."""

    __slots__ = ("add", "on_due")

    def __init__(self, aggregator: Aggregator, on_due: Callable[[], None]) -> None:
        self.add = aggregator.add
        self.on_due = on_due

    def __call__(self, flow: Flow) -> Flow:
        route = (flow.severity, flow.sinks) if flow.routed else None
        if self.add(flow.event, flow.event.received, route):
            self.on_due()
        return flow


class ForwardStage:
    """Offers the event to each forwarding sink its route allows (all, without routes)."""

    __slots__ = ("forwarders",)

    def __init__(self, forwarders: Mapping[str, ForwardWorker]) -> None:
        self.forwarders = forwarders

    def __call__(self, flow: Flow) -> Flow:
        sinks = flow.sinks
        for name, forwarder in self.forwarders.items():
            if sinks is None or name in sinks:
                forwarder.offer(flow.event)
        return flow


@dataclass
class EventPipeline:
    """The stages and the state they own, as built by `build`."""

    aggregator: Aggregator
    mute: MuteStage
    chain: Chain

    def accept(self, event: Event) -> None:
        self.chain(Flow(event))


def detector(cfg: ScanConfig) -> ScanDetector | None:
    return ScanDetector.for_rule(cfg.rule) if cfg.enabled else None


def build(
    cfg: Config,
    *,
    forwarders: Mapping[str, ForwardWorker],
    on_due: Callable[[], None],
    on_muted: MutedHook,
    on_scan: Callable[[ScanSignal], None] | None = None,
    previous: EventPipeline | None = None,
    previous_scan: ScanConfig | None = None,
    ban: Stage | None = None,
) -> EventPipeline:
    """The pipeline for `cfg`; with `previous`, its groups, silences, silenced count and
    (for an unchanged [scan]) the scan detector's memory carry over. `ban` (the nftables
    sink's stage, pipeline/ban.py) goes first: before mute, so a silence hides a source
    from digests but never shields it from a ban, and before any rate limit."""
    router = Router(cfg.routes)
    scans = detector(cfg.scan)
    if previous is not None and previous_scan == cfg.scan:
        scans = previous.aggregator.scans  # what it has seen is state, not settings
    aggregator = Aggregator(
        cfg.digest,
        cfg.limits.max_groups,
        cfg.limits.untrusted_interval,
        router,
        scans=scans,
        scan_severity=cfg.scan.severity,
        on_scan=on_scan,
    )
    mute = Mute(cfg.ignore.networks, cfg.ignore.daemons)
    mute_stage = MuteStage(mute, on_muted)
    if previous is not None:
        aggregator.restore(previous.aggregator.export_all())
        mute.silences = list(previous.mute.mute.silences)
        mute_stage.silenced = previous.mute.silenced
    stages: list[Stage] = [mute_stage] if ban is None else [ban, mute_stage]
    if router.routes:
        stages.append(RouteStage(router))
    stages.append(AggregateStage(aggregator, on_due))
    if forwarders:
        stages.append(ForwardStage(forwarders))
    return EventPipeline(aggregator, mute_stage, Chain(stages))
