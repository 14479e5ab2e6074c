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

Only trusted events count: an untrusted report (any local user can send
one, naming any address) never reaches the counter.

Bounded memory, written down: at most MAX_TRACKED targets, each holding at
most `threshold` timestamps; past the bound the oldest targets are
forgotten (a slow attacker among a flood of new sources may need more
refusals to be banned; the flood's own sources are counted all the same).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from wrapalert.banrule import BanRule
from wrapalert.pipeline.stage import Flow

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

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class BanStage:
    """Counts each trusted event towards its source's ban; never stops an event."""

    __slots__ = ("counter", "on_ban", "rule", "settled")

    def __init__(self, rule: BanRule, settled: dict[str, float], on_ban: BanHook) -> None:
        self.rule = rule
        self.counter = BanCounter(rule.threshold, rule.window)
        # target -> until: banned (or, in dry-run, would be), or refused a ban lately.
        # The book's own dict: read here, never written.
        self.settled = settled
        self.on_ban = on_ban

    def __call__(self, flow: Flow) -> Flow:
        event = flow.event
        if not event.trusted:
            return flow
        target = self.rule.target(event.fields.get("client_addr", "unknown"))
        if target is None or target in self.settled:
            return flow  # decided already: nothing to count until that expires
        if self.counter.hit(target, event.received):
            self.on_ban(target, f"{self.rule.threshold} refusals", event.received)
        return flow
