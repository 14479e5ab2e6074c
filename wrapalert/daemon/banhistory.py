"""The ban history: when each target was banned, so a repeat offender is banned longer.

The ban policy (daemon/banpolicy.py) counts a target's earlier bans within
`ban_memory` to size its next one (banrule.BanRule.length); `wrapalert
explain` shows them. The ban book (daemon/bans.py) keeps the history in the
state database (table `ban_history`, one row per ban) and loads it at start,
so a restart forgets no offence. Pure: no clock, no state database.

Bounded, written down: at most MAX_PER_TARGET bans per target (the newest:
a count past it shows as MAX_PER_TARGET, and a ban's length stops growing far
earlier, at `ban_max`) and MAX_TARGETS targets, the one banned least recently
forgotten first. Past the bound a returning offender may be banned for less
than its record deserves, never for more. Bans older than `ban_memory` are
forgotten (`forget_before`).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_PER_TARGET = 16
MAX_TARGETS = 20_000


class BanHistory:
    """target -> when it was banned (oldest first); targets ordered by their last ban."""

    def __init__(self) -> None:
        self._times: dict[str, tuple[float, ...]] = {}

    def add(self, target: str, at: float) -> list[str]:
        """One more ban of `target` at `at`; the targets forgotten to make room."""
        times = self._times.pop(target, ())
        self._times[target] = (*times, at)[-MAX_PER_TARGET:]  # last: banned most recently
        forgotten = []
        while len(self._times) > MAX_TARGETS:
            oldest = next(iter(self._times))
            del self._times[oldest]
            forgotten.append(oldest)
        return forgotten

    def load(self, rows: Iterable[tuple[str, float]]) -> None:
        """The state database's rows (target, since), in any order."""
        for target, at in sorted(rows, key=lambda row: row[1]):
            self.add(target, at)

    def earlier(self, target: str, now: float, memory: float) -> int:
        """The bans of `target` within `memory` seconds before `now`."""
        horizon = now - memory
        return sum(horizon < t <= now for t in self._times.get(target, ()))

    def times(self, target: str) -> tuple[float, ...]:
        """When `target` was banned, oldest first (what is remembered)."""
        return self._times.get(target, ())

    def targets(self) -> list[str]:
        return list(self._times)

    def forget_before(self, horizon: float) -> None:
        """Forget bans made before `horizon` (older than `ban_memory`)."""
        for target, times in list(self._times.items()):
            kept = tuple(t for t in times if t >= horizon)
            if not kept:
                del self._times[target]
            elif len(kept) != len(times):
                self._times[target] = kept

    def __len__(self) -> int:
        return len(self._times)
