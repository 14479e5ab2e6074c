"""The values that flow between intake, the pipeline and the sinks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from wrapalert.match import DEFAULT_SEVERITY, highest

# Bounded detail per group: beyond this many distinct values only counts grow.
MAX_DETAIL = 16
TIMELINE_BUCKET = 60.0  # seconds per timeline bar
TIMELINE_MAX = 240  # buckets kept per group (4 h at 1 min); older bars fold into the first


@dataclass(slots=True)  # not frozen: one is made per datagram, and frozen costs a microsecond
class Event:
    """One refused connection, validated; `fields` uses the long names of wire.FIELDS."""

    fields: dict[str, str]
    received: float
    uid: int | None = None  # kernel-verified sender (None: no credentials attached)
    pid: int | None = None
    trusted: bool = True
    origin: str = "socket"  # or "spool"
    # What the kernel vouches for (daemon/witness.py): "tcp" (a completed handshake from
    # the client address), "udp" or "unknown". Only "tcp" ever counts toward a ban.
    transport: str = "unknown"

    def get(self, name: str) -> str:
        return self.fields.get(name, "unknown")


class Tally:
    """Counts per value, keeping at most `limit` distinct values; the rest go to `other`."""

    __slots__ = ("counts", "limit", "other")

    def __init__(self, limit: int = MAX_DETAIL) -> None:
        self.counts: Counter[str] = Counter()
        self.limit = limit
        self.other = 0

    def add(self, value: str, n: int = 1) -> None:
        if value in self.counts or len(self.counts) < self.limit:
            self.counts[value] += n
        else:
            self.other += n

    def merge(self, other: Tally) -> None:
        for value, n in other.counts.items():
            self.add(value, n)
        self.other += other.other

    def top(self) -> tuple[tuple[str, int], ...]:
        return tuple(self.counts.most_common())

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "limit": self.limit, "other": self.other}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        tally = cls(int(data["limit"]))
        tally.counts.update({str(k): int(v) for k, v in data["counts"].items()})
        tally.other = int(data["other"])
        return tally


# The key of the group past every roll-up level (and its untrusted twin): the aggregator
# makes it, digests tell it apart.
OVERFLOW = "(overflow)"


@dataclass(frozen=True)
class GroupReport:
    """What one group did since its last notification."""

    key: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # group_by field -> value
    reason: str  # "new group" | "new activity" | "shutdown flush" | "manual flush" (| "test")
    events: int  # new since the last notification
    total: int  # since the group was created
    first_seen: float  # of the new events
    last_seen: float
    group_first_seen: float
    trusted: bool
    uid: int | None
    daemons: tuple[tuple[str, int], ...]
    addrs: tuple[tuple[str, int], ...]
    names: tuple[tuple[str, int], ...]
    users: tuple[tuple[str, int], ...]
    more_addrs: int = 0  # events from addresses beyond the detail bound
    # New events per TIMELINE_BUCKET seconds: (bucket start, count), oldest first, bounded.
    timeline: tuple[tuple[float, int], ...] = ()
    sources: int = 0  # distinct client addresses among the new events
    sources_exact: bool = True  # False: a HyperLogLog estimate (about 3 % error)
    level: str = "exact"  # "exact", "network" (/24, /64), "wide network" (/16, /48), "overflow"
    severity: str = DEFAULT_SEVERITY  # one of match.SEVERITIES, from the first matching route
    sinks: tuple[str, ...] | None = None  # the sinks it goes to (None: every sink)
    # The daemon's scan signals this group completed, each ScanSignal.as_tuple():
    # (kind, target, sources, first, last, *daemons) as text.
    scan: tuple[tuple[str, ...], ...] = ()
    # The new events by what the kernel vouched for (Event.transport), sorted:
    # (("tcp", 3), ("udp", 1)). Empty for reports made before it was counted.
    transports: tuple[tuple[str, int], ...] = ()

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass(frozen=True)
class BanNote:
    """One line of a digest's "Banned" section: what happened to a ban (daemon/bans.py)."""

    # One of: banned, would ban (dry-run), refused, expired, lifted, unenforced (the
    # target says how many bans the kernel does not drop, the reason why), repaired (the
    # target is the table, the reason what was wrong) or more (the target says how many
    # notes were left out).
    action: str
    target: str
    reason: str
    until: float

    def as_tuple(self) -> tuple[str, str, str, float]:
        return (self.action, self.target, self.reason, self.until)

    @classmethod
    def from_list(cls, values: list[Any] | tuple[Any, ...]) -> BanNote:
        """From `as_tuple`'s values as JSON gave them back (ValueError, TypeError if not)."""
        action, target, reason, until = values
        return cls(str(action), str(target), str(reason), float(until))


@dataclass(frozen=True)
class Digest:
    """One notification: the reports of the groups that fell due together."""

    host: str
    created: float
    groups: tuple[GroupReport, ...]
    held: int = 0  # events in this digest that waited for the rate limit
    silenced: int = 0  # events matched by a silence since the previous digest (not reported)
    merged: int = 1  # how many digests were merged into this one
    banned: tuple[BanNote, ...] = ()  # the nftables sink's news since the previous digest
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", digest_id(self))

    @property
    def events(self) -> int:
        return sum(g.events for g in self.groups)

    @property
    def trusted_events(self) -> int:
        """New events reported by trusted uids: what X-Wrapalert-Events counts."""
        return sum(g.events for g in self.groups if g.trusted)

    @property
    def untrusted_events(self) -> int:
        """New events reported by other uids: what X-Wrapalert-Untrusted counts."""
        return sum(g.events for g in self.groups if not g.trusted)

    @property
    def sources(self) -> int:
        """Distinct client addresses in this digest (see `count_sources`)."""
        return count_sources(self.groups)

    @property
    def trusted_sources(self) -> int:
        """Distinct client addresses of trusted reports: what X-Wrapalert-Sources counts."""
        return count_sources(tuple(g for g in self.groups if g.trusted))

    @property
    def severity(self) -> str:
        """The highest severity among the groups."""
        return highest(g.severity for g in self.groups)

    @property
    def untrusted(self) -> tuple[GroupReport, ...]:
        return tuple(g for g in self.groups if not g.trusted)

    @property
    def window(self) -> tuple[float, float]:
        """First and last new event; quiet "repeat" reports stretch it only if alone."""
        active = [g for g in self.groups if g.events] or list(self.groups)
        if not active:
            return (self.created, self.created)
        return (min(g.first_seen for g in active), max(g.last_seen for g in active))


def count_sources(groups: tuple[GroupReport, ...]) -> int:
    """Distinct client addresses in `groups`: those listed, plus each group's unlisted
    ones (counted, or estimated, by the group)."""
    listed = {addr for g in groups for addr, _ in g.addrs}
    return len(listed) + sum(max(0, g.sources - len(g.addrs)) for g in groups)


def alert_test_report(now: float) -> GroupReport:
    """The one group of a `wrapalert test-alert` digest: no events, so the counts the
    X-Wrapalert-* headers add up stay true, and a reason the templates recognise."""
    return GroupReport(
        key=("(test)",),
        labels=(("test", "wrapalert test-alert"),),
        reason="test",
        events=0,
        total=0,
        first_seen=now,
        last_seen=now,
        group_first_seen=now,
        trusted=True,
        uid=None,
        daemons=(),
        addrs=(),
        names=(),
        users=(),
        severity="info",
    )


def digest_id(digest: Digest) -> str:
    """Stable id: the same digest always renders with the same Message-ID."""
    h = hashlib.sha256(digest.host.encode())
    h.update(repr(digest.created).encode())
    for g in digest.groups:
        h.update(repr((g.key, g.events, g.first_seen, g.last_seen)).encode())
    if digest.banned:  # only then: the ids of digests without bans stay as they were
        h.update(repr(tuple(note.as_tuple() for note in digest.banned)).encode())
    return h.hexdigest()[:32]


def merge_digests(digests: list[Digest], created: float) -> Digest:
    """One digest carrying everything in `digests` (used when a rate limit held them back)."""
    if len(digests) == 1:
        return digests[0]
    return replace(
        digests[-1],
        created=created,
        groups=tuple(fold_reports([g for d in digests for g in d.groups])),
        held=sum(d.held for d in digests),
        silenced=sum(d.silenced for d in digests),
        merged=sum(d.merged for d in digests),
        banned=tuple(b for d in digests for b in d.banned),
        id="",
    )


def digest_to_json(digest: Digest) -> str:
    """The digest as JSON, for the outbox: it must come back with the same id."""
    # Shallow on purpose: dataclasses.asdict deep-copies every tuple, which dominated
    # the cost of large digests.
    data = {f.name: getattr(digest, f.name) for f in fields(digest)}
    data["groups"] = [{f.name: getattr(g, f.name) for f in fields(g)} for g in digest.groups]
    data["banned"] = [note.as_tuple() for note in digest.banned]
    return json.dumps(data, separators=(",", ":"))


def _bounded_timeline(counts: Counter[float]) -> tuple[tuple[float, int], ...]:
    """At most TIMELINE_MAX bars, the oldest folded into the first kept: the sum stays."""
    bars = sorted(counts.items())
    if len(bars) <= TIMELINE_MAX:
        return tuple(bars)
    cut = len(bars) - TIMELINE_MAX
    first = (bars[cut][0], bars[cut][1] + sum(n for _, n in bars[:cut]))
    return (first, *bars[cut + 1 :])


MAX_DIGEST_GROUPS = 100  # groups listed in one digest; the rest are folded into one


def fold_reports(reports: list[GroupReport], limit: int = MAX_DIGEST_GROUPS) -> list[GroupReport]:
    """At most `limit` reports: the busiest (untrusted ones always kept apart), then one
    "(N more groups)" report summing the rest. Counts stay exact; detail is bounded."""
    if len(reports) <= limit:
        return reports
    # Untrusted first (always kept apart), then groups with a scan signal, then the busiest.
    ranked = sorted(reports, key=lambda r: (r.trusted, not r.scan, -r.events, r.key))
    keep, rest = ranked[: limit - 1], ranked[limit - 1 :]
    keep += [r for r in rest if not r.trusted]
    rest = [r for r in rest if r.trusted]
    if not rest:
        return keep
    tallies = {name: Tally(MAX_DETAIL * 4) for name in ("daemons", "addrs", "names", "users")}
    timeline: Counter[float] = Counter()
    transports: Counter[str] = Counter()
    for r in rest:
        for name, tally in tallies.items():
            for value, n in getattr(r, name):
                tally.add(value, n)
        timeline.update(dict(r.timeline))
        transports.update(dict(r.transports))
    tallies["addrs"].other += sum(r.more_addrs for r in rest)
    folded = GroupReport(
        key=("(more groups)",),
        labels=(("group", f"{len(rest):,} more groups"),),
        reason="folded",
        events=sum(r.events for r in rest),
        total=sum(r.total for r in rest),
        first_seen=min(r.first_seen for r in rest),
        last_seen=max(r.last_seen for r in rest),
        group_first_seen=min(r.group_first_seen for r in rest),
        trusted=True,
        uid=None,
        daemons=tallies["daemons"].top(),
        addrs=tallies["addrs"].top(),
        names=tallies["names"].top(),
        users=tallies["users"].top(),
        more_addrs=tallies["addrs"].other,
        timeline=_bounded_timeline(timeline),
        sources=sum(r.sources for r in rest),  # an upper bound: groups may share sources
        sources_exact=False,
        level="folded",
        severity=highest(r.severity for r in rest),
        transports=tuple(sorted(transports.items())),
    )
    return [*keep, folded]


def digest_from_json(text: str) -> Digest:
    data = json.loads(text)
    groups = tuple(_report_from_dict(g) for g in data.pop("groups"))
    data["banned"] = tuple(BanNote.from_list(b) for b in data.get("banned", ()))
    return Digest(groups=groups, **data)


def _pairs(items: list[list[Any]]) -> tuple[tuple[Any, Any], ...]:
    return tuple((a, b) for a, b in items)


def _report_from_dict(data: dict[str, Any]) -> GroupReport:
    data = dict(data)
    data["key"] = tuple(data["key"])
    for name in ("labels", "daemons", "addrs", "names", "users", "timeline"):
        data[name] = _pairs(data[name])
    if data.get("sinks") is not None:
        data["sinks"] = tuple(data["sinks"])
    data["scan"] = tuple(tuple(signal) for signal in data.get("scan", ()))
    data["transports"] = _pairs(data.get("transports", []))
    return GroupReport(**data)
