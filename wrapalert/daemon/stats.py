"""Counters the daemon keeps and `wrapalert status` shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Monotonic counters since start. `received` counts accepted events only."""

    received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    untrusted: int = 0
    spooled: int = 0
    digests: int = 0
    delivered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    events_delivered: Counter[str] = field(default_factory=Counter)
    events_failed: Counter[str] = field(default_factory=Counter)

    def as_dict(
        self, *, groups: int, pending_events: int, outbox: int, sinks: list[str]
    ) -> dict[str, object]:
        return {
            "received": self.received,
            "rejected": dict(self.rejected),
            "untrusted": self.untrusted,
            "spooled": self.spooled,
            "groups": groups,
            "pending_events": pending_events,
            "outbox": outbox,
            "digests": self.digests,
            "sinks": {
                name: {
                    "delivered": self.delivered[name],
                    "failed": self.failed[name],
                    "events_delivered": self.events_delivered[name],
                    "events_failed": self.events_failed[name],
                }
                for name in sinks
            },
        }
