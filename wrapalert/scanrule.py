"""What a scan is: the one definition the daemon's detector and the digest share.

Two kinds, each counted within `window` seconds:
* `daemons`: one address refused by at least `daemons` distinct daemons
  (a port scan across wrapped services);
* `sweep`: one IPv4 /24 or IPv6 /64 refused for at least `sources` distinct
  addresses (a sweep, or addresses rotated within one network).

`[scan]` in the config sets the numbers (`config.ScanConfig.rule`). The
detector (pipeline/scan.py) keeps the bounded state and asks this rule;
digests list only the `ScanSignal`s the detector attached to their groups,
so a mail's Scans, its X-Wrapalert-Scans and `status`'s `scans` agree.
Pure: no clock, no state, stdlib and wrapalert.netaddr only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wrapalert import netaddr

KINDS = ("daemons", "sweep")


def network(addr: str) -> str | None:
    """The /24 or /64 a sweep is counted in, None for what is not an address ("unknown")."""
    address = netaddr.packed(addr)
    return None if address is None else netaddr.network(address, 1)


@dataclass(frozen=True, slots=True)
class ScanRule:
    """The thresholds of both kinds and the window they are counted in."""

    window: float  # seconds in which the distinct daemons or sources must fall
    daemons: int  # distinct daemons refusing one address
    sources: int  # distinct addresses refused in one /24 or /64

    def threshold(self, kind: str) -> int:
        """How many distinct values make a scan of `kind` ("daemons" or "sweep")."""
        if kind == "daemons":
            return self.daemons
        if kind == "sweep":
            return self.sources
        raise ValueError(f"unknown scan kind {kind!r}")

    def reached(self, kind: str, seen: Mapping[str, float], now: float) -> bool:
        """Whether the values in `seen` (daemon or address -> when last seen) that fall
        within the window ending at `now` are enough for a scan of `kind`."""
        horizon = now - self.window
        return sum(t >= horizon for t in seen.values()) >= self.threshold(kind)


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
        return signal if kind in KINDS else None

    def describe(self) -> str:
        """One line for the digest and the log; built only from validated values."""
        minutes = max(1, round((self.last - self.first) / 60))
        if self.kind == "daemons":
            return (
                f"scan: {self.target} tried {len(self.daemons)} daemons "
                f"({', '.join(self.daemons)}) within {minutes} min"
            )
        return f"sweep: {self.sources} addresses in {self.target} within {minutes} min"
