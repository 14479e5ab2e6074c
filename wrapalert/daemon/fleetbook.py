"""The ban book's fleet pages: what this host tells the fleet of its own bans, and what it
keeps of the fleet's bans between two looks.

Long-lived (the ban book, daemon/bans.py, builds it and writes it; the fleet's
runtime part, daemon/fleet.py, reads it and posts):

- `notices`: this host's bans as the fleet should hold them, one per (target,
  reason label): in force until their expiry, or lifted (posted as resolved
  until their expiry has passed too, so a peer that missed the lift hears it at
  the next full post). `changed` holds what the next post must carry at once;
  `wake` tells the poster. Bans this host follows never get a notice (no echo);
  nor do dry-run bans, nor bans found in the kernel without a record.
- `exceptions`: fleet bans lifted here by hand (`ban del`, `ban flush`): not
  followed again until that fleet ban ends (the target leaves the fleet's
  view) or the fleet bans it anew past that end. Saved in the state database.
- `refused`: fleet bans this host's rules refused, remembered (why, until when)
  so each is counted, logged and noted once, and the shield (this host's
  addresses, its sessions) is not asked again at every look: until the fleet
  ban's end for "allowlisted" and "wide", for a `window` for "session" and
  "cap" (a session may end, a slot may free). Forgotten at each reload.

Bounded, written down: notices at most one per ban in force plus MAX_RESOLVED
lifted ones (the oldest forgotten first: a peer that missed that lift keeps the
alert until its own endsAt); exceptions and refusals at most MAX_REMEMBERED
each, the oldest forgotten first (that fleet ban is then followed, or counted,
again).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from wrapalert.daemon.banpolicy import MAX_MANUAL, Ban, Refusal
from wrapalert.daemon.store import Store
from wrapalert.fleetwire import FleetBan, Notice, View, reason_label

MAX_RESOLVED = 10_000
MAX_REMEMBERED = 16_384

NoticeKey = tuple[str, str]  # (target, reason label): one WrapalertBan alert


class FleetBook:
    """The fleet's pages of the ban book (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.notices: dict[NoticeKey, Notice] = {}
        self.changed: set[NoticeKey] = set()
        self.wake = asyncio.Event()
        self.exceptions: dict[str, float] = {}  # target -> the end of the fleet ban lifted
        self.refused: dict[str, tuple[str, float]] = {}  # target -> (why, until)

    def load(self) -> None:
        """The exceptions the state database kept."""
        self.exceptions = dict(self.store.fleet_exceptions())

    # -- what this host tells the fleet ----------------------------------------------------

    def published(self, ban: Ban) -> None:
        """A ban of this host's own, made or renewed: announced (and any other alert of
        the same target, under another reason, resolved)."""
        if ban.origin != "local" or ban.dry_run or ban.reason == "found in the kernel":
            return
        key = (ban.target, reason_label(ban.reason))
        for other in [k for k in self.notices if k[0] == ban.target and k != key]:
            self._end(other, ban.since)
        self.notices.pop(key, None)  # re-inserted last: the dict's order is oldest first
        self.notices[key] = Notice(ban.target, ban.reason, ban.since, ban.until)
        self._changed(key)

    def lifted(self, ban: Ban, now: float) -> None:
        """A ban of this host's own lifted before its time: resolved at the peers."""
        if ban.origin == "local":
            self._end((ban.target, reason_label(ban.reason)), now)

    def expired(self, ban: Ban) -> None:
        """A ban of this host's own ran out: its alert ends by itself (endsAt)."""
        self.notices.pop((ban.target, reason_label(ban.reason)), None)

    def _end(self, key: NoticeKey, now: float) -> None:
        notice = self.notices.get(key)
        if notice is None or notice.ended is not None:
            return
        self.notices[key] = Notice(notice.target, notice.reason, notice.since, notice.until, now)
        self._changed(key)
        ended = [k for k, n in self.notices.items() if n.ended is not None]
        for old in ended[: max(0, len(ended) - MAX_RESOLVED)]:
            del self.notices[old]

    def _changed(self, key: NoticeKey) -> None:
        self.changed.add(key)
        self.wake.set()

    def take_changed(self) -> list[Notice]:
        """What changed since the last call: to be posted at once."""
        found = [self.notices[k] for k in self.changed if k in self.notices]
        self.changed.clear()
        self.wake.clear()
        return found

    def every(self, now: float) -> list[Notice]:
        """Every notice the peers should hold now (a full post); resolutions whose ban
        would have ended by now are forgotten (their alert has ended anyway)."""
        for key in [k for k, n in self.notices.items() if n.until <= now]:
            del self.notices[key]
        return list(self.notices.values())

    # -- what this host keeps of the fleet's bans -------------------------------------------

    def excepted(self, target: str, ban: FleetBan) -> bool:
        """Whether an admin lifted this fleet ban here (and it has not been made anew)."""
        end = self.exceptions.get(target)
        return end is not None and ban.until <= end

    def except_(self, ban: Ban) -> None:
        """`ban del` of a fleet ban: not followed again while that fleet ban lasts. One
        held here for the year at most (banpolicy.MAX_MANUAL) ends later in the fleet, at
        a time not kept here: lifted while the fleet holds it at all."""
        capped = ban.until >= ban.since + MAX_MANUAL
        self.exceptions.pop(ban.target, None)
        self.exceptions[ban.target] = math.inf if capped else ban.until
        while len(self.exceptions) > MAX_REMEMBERED:
            del self.exceptions[next(iter(self.exceptions))]
        self.store.stage_fleet_exceptions(self.exceptions)

    def remembered(self, target: str, now: float) -> bool:
        """Whether a refusal of this target is remembered still."""
        known = self.refused.get(target)
        return known is not None and known[1] > now

    def remember(self, refusal: Refusal, window: float, now: float) -> None:
        long = refusal.why in ("allowlisted", "wide")
        until = refusal.until if long else min(refusal.until, now + window)
        self.refused.pop(refusal.target, None)
        self.refused[refusal.target] = (refusal.why, until)
        while len(self.refused) > MAX_REMEMBERED:
            del self.refused[next(iter(self.refused))]

    def forget(self, view: View, now: float) -> None:
        """After a look at the fleet: exceptions whose fleet ban ended, or was made anew
        past the end it had, and refusals past their time, are dropped."""
        stale = [
            t
            for t, end in self.exceptions.items()
            if (ban := view.bans.get(t)) is None or ban.until > end or end <= now
        ]
        for target in stale:
            del self.exceptions[target]
        if stale:
            self.store.stage_fleet_exceptions(self.exceptions)
        for target in [t for t, (_, until) in self.refused.items() if until <= now]:
            del self.refused[target]

    def reset_refusals(self) -> None:
        """A new rule (a reload): every refusal is looked at again."""
        self.refused.clear()

    def status(self, followed: Iterable[Ban]) -> dict[str, object]:
        """The book's side of status' `bans.fleet`."""
        bans = list(followed)
        return {
            "active": sum(not b.dry_run for b in bans),
            "dry_run_active": sum(b.dry_run for b in bans),
            "hosts": sorted({h for b in bans for h in b.hosts}),
            "exceptions": len(self.exceptions),
            "published": sum(n.ended is None for n in self.notices.values()),
        }
