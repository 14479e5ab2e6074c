"""Scan detection, a stage: one source trying several daemons, or one network many sources.

The scan stage runs after the aggregate stage and shows the detector each
(source, daemon) pair whose event started or woke an exact group (the
aggregate stage marks the Flow): a new group, or the first new event of a
reported one.
With the usual `group_by` (daemon and client address) that is every new
pair, at most once per group interval, so a flood from known sources costs
nothing here. Only a flood of new sources pays one dictionary update per
event, which the roll-up of those sources pays anyway.

Two signals, as wrapalert.scanrule defines them (its `ScanRule` holds the
`[scan]` thresholds and window; this module only keeps the state it needs):
`daemons` (one address, several daemons) and `sweep` (one /24 or /64, many
addresses). A target signals once per window, then again only after a quiet window.

Bounded memory, written down: at most MAX_TRACKED addresses and as many
networks, each holding at most `daemons` daemon names or `sources`
addresses. Past the bound the oldest entry is forgotten (so a very slow scan
among a flood of new sources can go unnoticed; its events are counted all
the same). Groups rolled up by network are not watched: past max_groups,
new sources are what the roll-up reports. Time is injected: `observe`
takes `now`.

A signal escalates the group that completed it (marked, raised to `[scan]
severity`), is counted and logged (`on_found`: the ledger), and goes as a
"scan" record to each forwarding sink whose descriptor takes scans (routes
do not apply: it is about a source, not an event). Only trusted reports are
watched: a local user's made-up addresses must not raise alarms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.forward import ForwardWorker, scan_record
from wrapalert.pipeline.stage import Flow
from wrapalert.scanrule import ScanRule, ScanSignal, network

MAX_TRACKED = 4096


class _Seen:
    """Recent values (value -> last seen) for one target, and when it last signalled."""

    __slots__ = ("signalled", "values")

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.signalled = float("-inf")


class ScanDetector:
    """Watches (address, daemon) pairs; `observe` returns the signals they complete."""

    def __init__(self, window: float, daemons: int, sources: int) -> None:
        self.rule = ScanRule(window, daemons, sources)
        self._addrs = _Recent()
        self._nets = _Recent()
        self.found = 0

    @classmethod
    def for_rule(cls, rule: ScanRule) -> ScanDetector:
        return cls(rule.window, rule.daemons, rule.sources)

    def observe(self, addr: str, daemon: str, now: float) -> list[ScanSignal]:
        """Note one pair; the scans it completes (usually none)."""
        if addr == "unknown":
            return []
        signals = []
        seen = self._addrs.entry(addr)
        if self._note(seen, daemon, now, "daemons"):
            first = min(seen.values.values())
            names = tuple(sorted(seen.values))
            signals.append(ScanSignal("daemons", addr, names, 1, first, now))
        net = network(addr)
        if net is not None:
            swept = self._nets.entry(net)
            if self._note(swept, addr, now, "sweep"):
                first = min(swept.values.values())
                addrs = len(swept.values)
                signals.append(ScanSignal("sweep", net, (daemon,), addrs, first, now))
        self.found += len(signals)
        return signals

    def _note(self, seen: _Seen, value: str, now: float, kind: str) -> bool:
        """Record `value`; True when this completes a scan of `kind` by the rule."""
        values = seen.values
        if value in values:
            values[value] = now
            return False
        horizon = now - self.rule.window
        if values and min(values.values()) < horizon:
            for old in [v for v, t in values.items() if t < horizon]:
                del values[old]
        values[value] = now
        if seen.signalled >= horizon or not self.rule.reached(kind, values, now):
            if len(values) > self.rule.threshold(kind):  # signalled already: keep the newest
                del values[next(iter(values))]
            return False
        seen.signalled = now
        return True

    @property
    def tracked(self) -> int:
        return len(self._addrs) + len(self._nets)


class ScanStage:
    """Shows the detector the pairs the aggregate stage marked; never stops an event."""

    __slots__ = ("aggregator", "detector", "forwarders", "on_found", "severity")

    def __init__(
        self,
        detector: ScanDetector,
        aggregator: Aggregator,
        *,
        severity: str,
        on_found: Callable[[ScanSignal], None],
        forwarders: Sequence[ForwardWorker] = (),
    ) -> None:
        self.detector = detector
        self.aggregator = aggregator
        self.severity = severity
        self.on_found = on_found
        self.forwarders = tuple(forwarders)  # the sinks that take "scan" records

    def __call__(self, flow: Flow) -> Flow:
        key = flow.woke
        if key is None or not flow.event.trusted:
            return flow
        event = flow.event
        get = event.fields.get
        addr, daemon = get("client_addr", "unknown"), get("daemon", "unknown")
        for signal in self.detector.observe(addr, daemon, event.received):
            self.aggregator.escalate(key, signal, self.severity)
            self.on_found(signal)
            record = scan_record(signal)
            for forwarder in self.forwarders:
                forwarder.offer_record(record)
        return flow

    def carry_over(self, previous: ScanStage | None) -> None:
        """Keep what `previous` has seen if it counted by the same rule: its memory is
        state, not settings (a reload that changes only the severity forgets nothing)."""
        if previous is not None and previous.detector.rule == self.detector.rule:
            self.detector = previous.detector


class _Recent:
    """At most MAX_TRACKED entries in two generations: when the young one is full it
    becomes the old one and the old one is dropped. O(1) per call, unlike deleting a
    dict's first key, which costs a scan over the holes it leaves."""

    __slots__ = ("old", "young")

    def __init__(self) -> None:
        self.young: dict[str, _Seen] = {}
        self.old: dict[str, _Seen] = {}

    def entry(self, key: str) -> _Seen:
        seen = self.young.get(key)
        if seen is None:
            seen = self.old.pop(key, None) or _Seen()
            if len(self.young) >= MAX_TRACKED // 2:
                self.old, self.young = self.young, {}
            self.young[key] = seen
        return seen

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def values(self) -> list[_Seen]:
        return [*self.young.values(), *self.old.values()]
