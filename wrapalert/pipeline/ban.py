"""The ban stage: counts trusted refusals per source and asks for a ban past the threshold.

Why a stage and not the nftables sink's `send_records`: sinks see events
through a ForwardWorker, whose rate limit folds events past
`events_per_second` into one "held" record without their addresses. A
flood, the very case a ban is for, would then count too few. This stage
runs first in the chain, on every accepted event, before any rate limit,
mute or roll-up, so each trusted refusal counts exactly once; the sink only
carries out decisions (few: at most one per target per `ban_for`).

It runs before the mute stage on purpose: a silence hides a source from
the digests, it does not protect the source from a ban (use `allow`).

Only trusted events whose source the kernel vouches for count: an
untrusted report (any local user can send one, naming any address) and a
report without a completed TCP handshake behind it (`Event.transport` other
than "tcp": a UDP service's client address is whatever the datagram said,
daemon/witness.py) never reach the counters.

Scans: one address refused by `[scan] daemons` distinct daemons within
`[scan] window` bans it at once (`scan = true`). The stage counts those
daemons itself, from the same vouched-for events, rather than taking the
digest's scan detector's word: that one sees every trusted report, forged
UDP ones included.

Bounded memory, written down: at most MAX_TRACKED targets, each holding at
most `threshold` timestamps (and, for scans, as many addresses, each at most
`[scan] daemons` daemon names); past the bound the oldest targets are
forgotten (a slow attacker among a flood of new sources may need more
refusals to be banned; the flood's own sources are counted all the same).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from wrapalert.banrule import BanRule
from wrapalert.pipeline.stage import Flow
from wrapalert.scanrule import ScanRule

MAX_TRACKED = 16_384
BanHook = Callable[[str, str, float], None]  # (target, reason, now)


class BanCounter:
    """Per-target sliding windows: `hit` says when a target reaches the threshold."""

    def __init__(self, threshold: int, window: float) -> None:
        self.threshold = threshold
        self.window = window
        self.young: dict[str, deque[float]] = {}
        self.old: dict[str, deque[float]] = {}

    def hit(self, target: str, now: float) -> bool:
        """Count one refusal; True (and forget the target) when it completes the threshold."""
        times = self.young.get(target)
        if times is None:
            times = self.old.pop(target, None) or deque(maxlen=self.threshold)
            if len(self.young) >= MAX_TRACKED // 2:  # two generations: O(1), bounded
                self.old, self.young = self.young, {}
            self.young[target] = times
        times.append(now)
        if len(times) == self.threshold and times[0] > now - self.window:
            del self.young[target]
            return True
        return False

    def forget(self, target: str) -> None:
        self.young.pop(target, None)
        self.old.pop(target, None)

    def counted(self, target: str, now: float) -> int:
        """The target's refusals counted within the window ending at `now`."""
        times = self.young.get(target) or self.old.get(target) or ()
        return sum(t > now - self.window for t in times)

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class ScanCounter:
    """Per-address daemons seen within the window: `hit` says when an address reaches the
    scan rule's `daemons` (the rule's "daemons" kind, scanrule.py)."""

    def __init__(self, rule: ScanRule) -> None:
        self.rule = rule
        self.young: dict[str, dict[str, float]] = {}
        self.old: dict[str, dict[str, float]] = {}

    def hit(self, addr: str, daemon: str, now: float) -> int:
        """Count one refusal of `addr` by `daemon`; the number of daemons when that
        completes a scan (and the address is forgotten), else 0."""
        seen = self.young.get(addr)
        if seen is None:
            seen = self.old.pop(addr, None) or {}
            if len(self.young) >= MAX_TRACKED // 2:
                self.old, self.young = self.young, {}
            self.young[addr] = seen
        seen.pop(daemon, None)
        seen[daemon] = now  # newest last
        horizon = now - self.rule.window
        for name in [d for d, t in seen.items() if t < horizon]:
            del seen[name]
        if not self.rule.reached("daemons", seen, now):
            return 0  # so fewer than `daemons` names are kept, each within the window
        del self.young[addr]
        return len(seen)

    def counted(self, addr: str, now: float) -> int:
        """The daemons that refused `addr` within the window ending at `now`."""
        seen = self.young.get(addr) or self.old.get(addr) or {}
        return sum(t >= now - self.rule.window for t in seen.values())


@dataclass(frozen=True)
class BanProgress:
    """How near a source is to a ban, as the stage counts (for `wrapalert explain`)."""

    refusals: int  # the target's handshake-proven trusted refusals within `window`
    threshold: int
    window: float
    daemons: int  # daemons that refused the address within `scan_window` (scans)
    scan_daemons: int  # daemons that make a scan ban it at once (0: scans do not ban)
    scan_window: float


class BanStage:
    """Counts each trusted, kernel-vouched event towards its source's ban; never stops
    an event."""

    __slots__ = ("counter", "on_ban", "rule", "scans", "settled")

    def __init__(
        self,
        rule: BanRule,
        settled: dict[str, float],
        on_ban: BanHook,
        scan: ScanRule | None = None,
    ) -> None:
        self.rule = rule
        self.counter = BanCounter(rule.threshold, rule.window)
        # Scans ban at once only with `scan = true` and a [scan] in force.
        self.scans = ScanCounter(scan) if scan is not None and rule.scan else None
        # target -> until: banned (or, in dry-run, would be), or refused a ban lately.
        # The book's own dict: read here, never written.
        self.settled = settled
        self.on_ban = on_ban

    def carry_over(self, previous: BanStage | None) -> None:
        """Keep `previous`'s counts where they count the same (a reload): the refusals if
        threshold and window are unchanged, the scans if the scan rule is."""
        if previous is None:
            return
        old = previous.rule
        if (old.threshold, old.window) == (self.rule.threshold, self.rule.window):
            self.counter = previous.counter
        scans = previous.scans
        if scans is not None and self.scans is not None and scans.rule == self.scans.rule:
            self.scans = scans

    def progress(self, target: str, addr: str, now: float) -> BanProgress:
        """What the stage has counted toward a ban of `target` (and, for scans, of `addr`)."""
        scans = self.scans
        return BanProgress(
            refusals=self.counter.counted(target, now),
            threshold=self.rule.threshold,
            window=self.rule.window,
            daemons=scans.counted(addr, now) if scans is not None else 0,
            scan_daemons=scans.rule.daemons if scans is not None else 0,
            scan_window=scans.rule.window if scans is not None else 0.0,
        )

    def __call__(self, flow: Flow) -> Flow:
        event = flow.event
        if not event.trusted or event.transport != "tcp":
            return flow  # no kernel-proven source: reported, never counted toward a ban
        addr = event.fields.get("client_addr", "unknown")
        target = self.rule.target(addr)
        if target is None or target in self.settled:
            return flow  # decided already: nothing to count until that expires
        now = event.received
        if self.counter.hit(target, now):
            self.on_ban(target, f"{self.rule.threshold} refusals", now)
        elif self.scans is not None:
            daemons = self.scans.hit(addr, event.fields.get("daemon", "unknown"), now)
            if daemons:
                self.on_ban(target, f"scan of {daemons} daemons", now)
        return flow
