"""Scan detection: one source trying several daemons, or one network many sources.

The aggregator shows the detector each (source, daemon) pair when it starts
or wakes a group: a new group, or the first new event of a reported one.
With the usual `group_by` (daemon and client address) that is every new
pair, at most once per group interval, so a flood from known sources costs
nothing here. Only a flood of new sources pays one dictionary update per
event, which the roll-up of those sources pays anyway.

Two signals, each within `window` seconds:
* `daemons`: one address refused by at least `daemons` distinct daemons
  (a port scan across wrapped services);
* `sweep`: one IPv4 /24 or IPv6 /64 refused for at least `sources` distinct
  addresses (a sweep, or addresses rotated within one network).
A target signals once per window, then again only after a quiet window.

Bounded memory, written down: at most MAX_TRACKED addresses and as many
networks, each holding at most `daemons` daemon names or `sources`
addresses. Past the bound the oldest entry is forgotten (so a very slow scan
among a flood of new sources can go unnoticed; its events are counted all
the same). Groups rolled up by network are not watched: past max_groups,
new sources are what the roll-up reports. Time is injected: `observe`
takes `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wrapalert.pipeline.netaddr import network as prefix_text
from wrapalert.pipeline.netaddr import packed

MAX_TRACKED = 4096


@dataclass(frozen=True, slots=True)
class ScanSignal:
    """A scan found: what it targeted, what it touched, and when."""

    kind: str  # "daemons" | "sweep"
    target: str  # the address, or the network as "net/prefix"
    daemons: tuple[str, ...]  # sorted; for a sweep, those seen (bounded)
    sources: int  # 1 for "daemons"; addresses seen in the network for "sweep"
    first: float
    last: float

    def as_tuple(self) -> tuple[str, ...]:
        """Plain text values, for reports and the state database (see `from_tuple`)."""
        times = (repr(self.first), repr(self.last))
        return (self.kind, self.target, str(self.sources), *times, *self.daemons)

    @classmethod
    def from_tuple(cls, values: tuple[str, ...]) -> ScanSignal | None:
        """The signal `as_tuple` made; None for anything else (a damaged record)."""
        try:
            kind, target, sources, first, last, *daemons = values
            signal = cls(kind, target, tuple(daemons), int(sources), float(first), float(last))
        except (ValueError, TypeError):
            return None
        return signal if kind in ("daemons", "sweep") else None

    def describe(self) -> str:
        """One line for the digest and the log; built only from validated values."""
        minutes = max(1, round((self.last - self.first) / 60))
        if self.kind == "daemons":
            return (
                f"scan: {self.target} tried {len(self.daemons)} daemons "
                f"({', '.join(self.daemons)}) within {minutes} min"
            )
        return f"sweep: {self.sources} addresses in {self.target} within {minutes} min"


class _Seen:
    """Recent values (value -> last seen) for one target, and when it last signalled."""

    __slots__ = ("signalled", "values")

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.signalled = float("-inf")


class ScanDetector:
    """Watches (address, daemon) pairs; `observe` returns the signals they complete."""

    def __init__(self, window: float, daemons: int, sources: int) -> None:
        self.window = window
        self.daemons = daemons
        self.sources = sources
        self._addrs = _Recent()
        self._nets = _Recent()
        self.found = 0

    def observe(self, addr: str, daemon: str, now: float) -> list[ScanSignal]:
        """Note one pair; the scans it completes (usually none)."""
        if addr == "unknown":
            return []
        signals = []
        seen = self._addrs.entry(addr)
        if self._note(seen, daemon, now, self.daemons):
            first = min(seen.values.values())
            names = tuple(sorted(seen.values))
            signals.append(ScanSignal("daemons", addr, names, 1, first, now))
        net = network(addr)
        if net is not None:
            swept = self._nets.entry(net)
            if self._note(swept, addr, now, self.sources):
                first = min(swept.values.values())
                addrs = len(swept.values)
                signals.append(ScanSignal("sweep", net, (daemon,), addrs, first, now))
        self.found += len(signals)
        return signals

    def _note(self, seen: _Seen, value: str, now: float, threshold: int) -> bool:
        """Record `value`; True when this makes `threshold` distinct values in the window."""
        values = seen.values
        if value in values:
            values[value] = now
            return False
        horizon = now - self.window
        if values and min(values.values()) < horizon:
            for old in [v for v, t in values.items() if t < horizon]:
                del values[old]
        values[value] = now
        if len(values) < threshold or seen.signalled >= horizon:
            if len(values) > threshold:  # signalled already: keep the newest only
                del values[next(iter(values))]
            return False
        seen.signalled = now
        return True

    @property
    def tracked(self) -> int:
        return len(self._addrs) + len(self._nets)


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


def network(addr: str) -> str | None:
    """The /24 or /64 holding a canonical address, None if it is not one."""
    address = packed(addr)
    return None if address is None else prefix_text(address, 1)
