"""Counters the daemon keeps and `wrapalert status` shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Stats:
    """Counters since the state database was created (persisted with it).

    `received` counts accepted events only; rejected ones are in `rejected`.
    """

    received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # The hook line's second copy of a refusal (daemon/twins.py): dropped, not received.
    duplicates: int = 0
    # What the kernel said of each accepted event's source (daemon/witness.py), by
    # outcome: tcp, udp, and why the others are unknown (no_ports, late, gone, reused,
    # skipped, failed; unchecked: untrusted senders, never looked up).
    evidence: Counter[str] = field(default_factory=Counter)
    untrusted: int = 0
    spooled: int = 0
    # Events clients sent to syslog because they could neither send nor spool, by
    # "trusted"/"untrusted": known from the markers they leave in the spool.
    syslog_fallbacks: Counter[str] = field(default_factory=Counter)
    ignored: int = 0  # matched [ignore]: counted, never notified
    silenced: int = 0  # matched an active silence: counted, never notified
    scans: int = 0  # scan signals the detector raised (pipeline/scan.py)
    digests: int = 0
    bans: int = 0  # bans put into the kernel (nftables sink), automatic and by hand
    bans_dry_run: int = 0  # bans decided in mode = "dry-run": reported, not made
    bans_refused: Counter[str] = field(default_factory=Counter)  # allowlisted, session, cap
    bans_expired: int = 0
    bans_lifted: int = 0  # ended early: `wrapalert ban del` or `flush`
    # Bans followed from the fleet (daemon/fleet.py), apart from this host's own: made,
    # ended (the fleet lifted them, their time ran out, or this host's rules since),
    # refused by this host's rules (allowlisted, session, cap, wide).
    fleet_bans: int = 0
    fleet_ended: int = 0
    fleet_refused: Counter[str] = field(default_factory=Counter)
    # The fleet's peers: alerts of theirs skipped as malformed, by reason, at each look.
    fleet_rejected: Counter[str] = field(default_factory=Counter)
    # What the kernel lost under a running daemon and the reconcile put back, by kind:
    # "table" (re-made), "declaration" (sets, chain or rules), elements "missing" (added),
    # "extra" (removed), "expiry" (timeouts set right).
    ban_repairs: Counter[str] = field(default_factory=Counter)
    # The daemon's notices about the alarm itself (wrapalert/notice.py) delivered, one per
    # sink, by kind (alarm-off, alarm-on, quiet); and those a sink refused for good.
    notices: Counter[str] = field(default_factory=Counter)
    notices_failed: int = 0
    canary_events: int = 0  # the canary's refusals (daemon/canaries.py): counted apart, only here
    delivered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    events_delivered: Counter[str] = field(default_factory=Counter)
    events_failed: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """Counters saved by `to_dict`; unknown or malformed entries are ignored."""
        stats = cls()
        stats.restore(data)
        return stats

    def restore(self, data: dict[str, Any]) -> None:
        """Add counters saved by `to_dict` (at start: to zeros); bad entries are ignored.

        In place: the parts that count hold this object from the start."""
        for f in fields(self):
            value = data.get(f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, getattr(self, f.name) + value)
            elif isinstance(value, dict):
                getattr(self, f.name).update(
                    {str(k): v for k, v in value.items() if isinstance(v, int)}
                )

    def as_dict(
        self,
        *,
        groups: int,
        pending_events: int,
        outbox: int,
        sinks: dict[str, dict[str, object]],
        state: dict[str, object],
    ) -> dict[str, object]:
        """The `wrapalert status --json` object (the design contract names its keys)."""
        return {
            "received": self.received,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "untrusted": self.untrusted,
            "spooled": self.spooled,
            "syslog_fallbacks": dict(self.syslog_fallbacks),
            "ignored": self.ignored,
            "silenced": self.silenced,
            "scans": self.scans,
            "canary_events": self.canary_events,
            "notices": dict(self.notices),
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
                    **extra,
                }
                for name, extra in sinks.items()
            },
            "state": state,
        }
