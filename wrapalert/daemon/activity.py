"""Who reports: trusted refusals per daemon and day, and each daemon's last one.

What the quiet watch (daemon/quiet.py: a daemon that used to report every day
and stopped) and the link check (daemon/hookwatch.py: the services that
reported in the last 30 days) read. Intake calls `seen` for every trusted
refusal it passes on (not for copies, canary refusals or untrusted reports:
a local user must not be able to keep a silent service looking alive).

Bounded: days are UTC days, the last KEEP_DAYS kept; at most MAX_DAEMONS
daemons, a new one past the cap replacing the one whose last refusal is
oldest (its counts go with it). Saved in the state database as one document
(`save`/`restore`), by the ledger, at most every SAVE_EVERY seconds and at
shutdown: a crash loses at most that much counting.
"""

from __future__ import annotations

from typing import Any

DAY = 86400.0
KEEP_DAYS = 31  # the link check looks 30 days back
MAX_DAEMONS = 256
SAVE_EVERY = 60.0  # seconds between saves while counting
MAX_NAME = 255  # a daemon name as the wire allows it


class Activity:
    """Counts per daemon and day; `seen` is on intake's hot path (a few dict updates)."""

    def __init__(self) -> None:
        self.days: dict[int, dict[str, int]] = {}
        self.last: dict[str, float] = {}  # each daemon's last refusal
        self.dirty = False
        self._day: int | None = None
        self._today: dict[str, int] = {}

    def seen(self, daemon: str, at: float) -> None:
        """One trusted refusal by `daemon` at `at`."""
        day = int(at // DAY)
        if day != self._day:
            self._roll(day)
        today = self._today
        if daemon in today:
            today[daemon] += 1
        else:
            if daemon not in self.last and len(self.last) >= MAX_DAEMONS:
                self._evict()
            today[daemon] = 1
        if at > self.last.get(daemon, 0.0):
            self.last[daemon] = at
        self.dirty = True

    def _roll(self, day: int) -> None:
        self._day = day
        self._today = self.days.setdefault(day, {})
        for old in [d for d in self.days if d <= day - KEEP_DAYS]:
            del self.days[old]

    def _evict(self) -> None:
        """Forget the daemon whose last refusal is the oldest, counts and all."""
        oldest = min(self.last, key=self.last.__getitem__)
        del self.last[oldest]
        for counts in self.days.values():
            counts.pop(oldest, None)

    # -- what the watches ask ------------------------------------------------------------

    def reporters(self, since: float) -> list[str]:
        """Daemons whose last refusal is at `since` or later, the latest first."""
        recent = [d for d, at in self.last.items() if at >= since]
        return sorted(recent, key=lambda d: -self.last[d])

    def average(self, daemon: str, until: float, days: int = 7) -> float:
        """Refusals a day by `daemon` over the `days` UTC days ending with the one of
        `until` (that day included)."""
        end = int(until // DAY)
        return sum(self.days.get(d, {}).get(daemon, 0) for d in range(end - days + 1, end + 1)) / (
            days
        )

    # -- the state database ------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        self.dirty = False
        return {
            "days": {str(day): dict(counts) for day, counts in self.days.items() if counts},
            "last": dict(self.last),
        }

    def restore(self, data: object) -> None:
        """What `save` wrote (at start); a damaged document costs the counts, no more."""
        if not isinstance(data, dict):
            return
        days, last = data.get("days"), data.get("last")
        if not isinstance(days, dict) or not isinstance(last, dict):
            return
        for name, at in last.items():
            if _name(name) and isinstance(at, int | float) and not isinstance(at, bool):
                self.last[name] = float(at)
        for day, counts in days.items():
            if not str(day).lstrip("-").isdigit() or not isinstance(counts, dict):
                continue
            self.days[int(day)] = {
                name: n
                for name, n in counts.items()
                if name in self.last and isinstance(n, int) and not isinstance(n, bool) and n > 0
            }
        while len(self.last) > MAX_DAEMONS:
            self._evict()
        if self.days:
            self._roll(max(self.days))  # drops what is older than KEEP_DAYS


def _name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME
