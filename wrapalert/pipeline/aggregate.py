"""Grouping with Alertmanager's timing model, in bounded memory.

A group (key = the `group_by` field values) waits `group_wait` after its
first event before its first report, then reports new activity at most
every `group_interval`. A group with nothing new for `repeat_interval` after
its last report gets one last "repeat" report (0 new events: "still quiet
since ...") and is then forgotten. Groups falling due within `batch_window`
of a due group are reported with it, so a burst becomes one digest.

Overload, written down: up to `max_groups` exact groups. Past that, a new
source joins (or starts) its network's group, IPv4 /24 or IPv6 /64, within
a reserve of max_groups // 8 (at least 16) more groups; past that, /16 or
/48 within one more reserve; past that, one overflow group. So memory is at
most max_groups + 2 reserves + 2 groups. Every level keeps exact event
counts, first and last seen, and a distinct-source count (exact up to 256,
a HyperLogLog estimate beyond); only detail is lost, never a count.

Untrusted senders (uids outside trusted_uids: anyone on the machine) have a
fixed budget: one group per uid, whatever fields they send, reported at
most once per `untrusted_interval` after its first report.

Time is injected: `add` and `collect` take `now`, so tests run on a fake clock.

Persistence: every changed group lands in `changes` (forgotten ones as None), a
`Changes` the owner gives (the daemon's one, daemon/ledger.py, which a reload's
new aggregator writes into too) and takes at each commit. `export`/`restore`
turn a group into plain data and back, field by field of `Group`: the state
database saves that, and a reload hands it to the new aggregator.

Scan detection is not here: the scan stage (pipeline/scan.py) comes after, reads
which exact group an event started or woke (`add` returns it) and escalates it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from wrapalert.config import DigestConfig
from wrapalert.match import DEFAULT_SEVERITY, severity_rank
from wrapalert.model import (
    MAX_DETAIL,
    OVERFLOW,
    TIMELINE_BUCKET,
    TIMELINE_MAX,
    Event,
    GroupReport,
    Tally,
)
from wrapalert.netaddr import network, packed
from wrapalert.pipeline.sketch import Distinct
from wrapalert.pipeline.stage import EVERYWHERE, Destination, Key
from wrapalert.scanrule import ScanSignal

UNTRUSTED = "(untrusted)"
LEVELS = ("exact", "network", "wide network", "overflow")
_NARROW = {4: 3, 16: 8}  # bytes of the level-1 prefix, by address length

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one `Group` field is saved as plain (JSON) data and read back."""

    save: Callable[[Any], Any]
    load: Callable[[Any], Any]


_STATE = "state"  # the field metadata key holding its _Codec (none: saved as it is)
_KEY = {_STATE: _Codec(list, lambda v: tuple(map(str, v)))}
_LABELS = {_STATE: _Codec(lambda v: [list(p) for p in v], lambda v: tuple((a, b) for a, b in v))}
_TALLY = {_STATE: _Codec(Tally.to_dict, Tally.from_dict)}
_DISTINCT = {_STATE: _Codec(Distinct.to_dict, Distinct.from_dict)}
_NAMES = {
    _STATE: _Codec(
        lambda v: None if v is None else list(v), lambda v: None if v is None else tuple(v)
    )
}
_TIMELINE = {
    _STATE: _Codec(
        lambda v: [[t, n] for t, n in v.items()], lambda v: {float(t): int(n) for t, n in v}
    )
}
_SIGNALS = {
    _STATE: _Codec(lambda v: [list(s) for s in v], lambda v: tuple(tuple(map(str, s)) for s in v))
}
_COUNTS = {_STATE: _Codec(dict, lambda v: {str(k): int(n) for k, n in v.items()})}


@dataclass(slots=True)
class Group:
    """One group's state; `export` saves it field by field (each field's codec, if not
    plain, in its metadata), so a new field is saved and restored without more code."""

    key: Key = field(metadata=_KEY)
    labels: Labels = field(metadata=_LABELS)
    trusted: bool
    uid: int | None
    created: float
    due: float
    repeat_due: float = 0.0
    total: int = 0
    new: int = 0
    first_new: float = 0.0
    last_seen: float = 0.0
    notified: bool = False
    level: int = 0
    severity: str = DEFAULT_SEVERITY
    sinks: tuple[str, ...] | None = field(default=None, metadata=_NAMES)  # None: every sink
    daemons: Tally = field(default_factory=Tally, metadata=_TALLY)
    addrs: Tally = field(default_factory=lambda: Tally(MAX_DETAIL * 4), metadata=_TALLY)
    names: Tally = field(default_factory=Tally, metadata=_TALLY)
    users: Tally = field(default_factory=Tally, metadata=_TALLY)
    sources: Distinct = field(default_factory=Distinct, metadata=_DISTINCT)
    timeline: dict[float, int] = field(default_factory=dict, metadata=_TIMELINE)
    # The daemon and address every event of this group has, when its key fixes them
    # (an exact trusted group keyed by them): their tallies and sketch are then implied,
    # and a flood from one source skips three updates per event. Saved too: a restore
    # under another group_by must count them for real (see `unfix`).
    fixed_daemon: str | None = None
    fixed_addr: str | None = None
    # The scan signals it completed since its last report, each ScanSignal.as_tuple().
    scan: tuple[tuple[str, ...], ...] = field(default=(), metadata=_SIGNALS)
    # New events by what the kernel vouched for (Event.transport): tcp, udp, unknown.
    transports: dict[str, int] = field(default_factory=dict, metadata=_COUNTS)

    def escalate(self, signal: ScanSignal, severity: str) -> None:
        self.scan = (*self.scan, signal.as_tuple())
        if severity_rank(severity) > severity_rank(self.severity):
            self.severity = severity

    def fix(self, group_by: tuple[str, ...]) -> None:
        """Set the fixed values from the labels (at creation and on restore), if the key
        is still made of today's group_by: after a change, another layout's key could
        collect events whose daemon or address differ."""
        if self.level == 0 and self.trusted and tuple(n for n, _ in self.labels) == group_by:
            labels = dict(self.labels)
            self.fixed_daemon = labels.get("daemon")
            self.fixed_addr = labels.get("client_addr")

    def unfix(self) -> None:
        """Tally the fixed values for real, from here on and for the news so far."""
        if self.fixed_daemon is not None:
            if self.new:
                self.daemons.add(self.fixed_daemon, self.new)
            self.fixed_daemon = None
        if self.fixed_addr is not None:
            if self.new:
                self.addrs.add(self.fixed_addr, self.new)
                self.sources.add(self.fixed_addr)
            self.fixed_addr = None


_AS_IS = _Codec(lambda v: v, lambda v: v)
# (name, save, load) of every Group field, in declaration order.
_FIELDS = tuple(
    (f.name, codec.save, codec.load)
    for f in fields(Group)
    for codec in (f.metadata.get(_STATE, _AS_IS),)
)


def export(group: Group) -> dict[str, Any]:
    """One group's whole state as plain data (JSON-ready)."""
    return {name: save(getattr(group, name)) for name, save, _ in _FIELDS}


def _load(state: dict[str, Any]) -> Group:
    """A group from `export`'s data; a field an older version did not save (none is
    required but the key, labels, trust, uid and times) takes its default."""
    return Group(**{name: load(state[name]) for name, _, load in _FIELDS if name in state})


class Changes:
    """Groups changed (or forgotten: None) since the last `take`: what the state database
    saves at its next commit. One per daemon (the ledger's): each aggregator a reload
    builds writes into the same one, so nothing changed before a reload is lost.

    Bounded by the groups: a key is in it at most once, whatever the events."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[Key, Group | None] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def take(self) -> Iterator[tuple[Key, dict[str, Any] | None]]:
        """Each changed group's state (None: forgotten), once. One at a time: a flood's
        ten thousand changed groups never sit in memory as plain data all at once."""
        taken = list(self.groups.items())
        self.groups.clear()
        for key, group in taken:
            yield key, None if group is None else export(group)


class Aggregator:
    """Owns every group; the only place where events become reports."""

    def __init__(
        self,
        cfg: DigestConfig,
        max_groups: int,
        untrusted_interval: float = 3600.0,
        *,
        changes: Changes | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_groups = max_groups
        self.untrusted_interval = untrusted_interval
        self.changes = changes if changes is not None else Changes()
        self._changed = self.changes.groups  # the hot path's handle (never replaced)
        # Derived once here, not per event.
        self._group_by = cfg.group_by
        self._unknowns = ("unknown",) * len(cfg.group_by)
        self._addr_at = cfg.group_by.index("client_addr") if "client_addr" in cfg.group_by else -1
        self.groups: dict[Key, Group] = {}
        # (due, seq, key): lazily invalidated; an entry counts only while it matches the
        # group's news timer (`due`, with news) or its repeat timer (`repeat_due`, without).
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = 0
        self._narrow: Counter[bytes] = Counter()  # level-1 groups per /24 or /64 prefix

    @property
    def pending_events(self) -> int:
        return sum(g.new for g in self.groups.values())

    @property
    def reserve(self) -> int:
        return max(16, self.max_groups // 8)

    def add(self, event: Event, now: float, route: Destination = EVERYWHERE) -> Group | None:
        """Count one event; its group when this started or woke it (its first news since a
        report: its timer was scheduled, the caller may re-plan), else None.

        `route` is what a route stage decided for this event; a new group takes it."""
        if event.trusted:
            key = tuple(map(event.fields.get, self._group_by, self._unknowns))
        else:
            key = self._untrusted_key(event)
        group = self.groups.get(key)
        if group is None:
            group = self._place(event, key, now, route)
        self._changed[group.key] = group
        woke = None
        if group.new == 0:
            group.first_new = now
            if group.notified:
                group.due = max(group.due, now)
            self._schedule(group, group.due)
            woke = group
        group.new += 1
        group.total += 1
        group.last_seen = now
        get = event.fields.get
        if group.fixed_daemon is None:
            group.daemons.add(get("daemon", "unknown"))
        if group.fixed_addr is None:
            addr = get("client_addr", "unknown")
            group.addrs.add(addr)
            group.sources.add(addr)
        group.names.add(get("client_name", "unknown"))
        group.users.add(get("user", "unknown"))
        transports = group.transports
        transports[event.transport] = transports.get(event.transport, 0) + 1
        timeline = group.timeline
        bucket = now - now % TIMELINE_BUCKET
        if bucket in timeline:
            timeline[bucket] += 1
        else:
            _new_bucket(timeline, bucket)
        return woke

    def escalate(self, key: Key, signal: ScanSignal, severity: str) -> None:
        """Mark a group with a scan signal it completed, and raise it to `severity`."""
        group = self.groups.get(key)
        if group is not None:
            group.escalate(signal, severity)
            self._changed[key] = group

    def next_due(self) -> float | None:
        """When the earliest timer (news or repeat) falls due, if any."""
        while self._heap:
            due, _, key = self._heap[0]
            if self._valid(key, due):
                return due
            heapq.heappop(self._heap)
        return None

    def collect(
        self, now: float, *, force: bool = False, reason: str = "shutdown flush"
    ) -> list[GroupReport]:
        """Reports of the groups due by `now`, with those due within the batch window after it.

        With `force`, every group with news, each report giving `reason` ("shutdown
        flush", "manual flush"). Nothing is sent early on its own: the window only
        lets near-due groups join a digest that goes out anyway.
        """
        if force:
            return [self._report(g, now, reason) for g in list(self.groups.values()) if g.new]
        first = self.next_due()
        if first is None or first > now:
            return []  # nothing is due: the window only gathers groups to go along
        horizon = now + self.cfg.batch_window
        reports, later = [], []
        while self._heap and self._heap[0][0] <= horizon:
            entry = heapq.heappop(self._heap)
            due, _, key = entry
            if not self._valid(key, due):
                continue
            group = self.groups[key]
            if group.new:
                reason = "new activity" if group.notified else "new group"
                reports.append(self._report(group, now, reason))
            elif due <= now:
                reports.append(self._repeat(group))
            else:
                later.append(entry)  # a repeat never goes early: "quiet" would be untrue
        for entry in later:
            heapq.heappush(self._heap, entry)
        return reports

    def _valid(self, key: Key, due: float) -> bool:
        group = self.groups.get(key)
        if group is None:
            return False
        if group.new:
            return group.due == due
        return group.notified and group.repeat_due == due

    def _report(self, group: Group, now: float, reason: str) -> GroupReport:
        report = self._snapshot(group, reason, group.new, group.first_new)
        self._changed[group.key] = group
        group.new = 0
        group.notified = True
        interval = self.cfg.group_interval
        if not group.trusted:
            interval = max(interval, self.untrusted_interval)
        group.due = now + interval
        group.repeat_due = now + self.cfg.repeat_interval
        self._schedule(group, group.repeat_due)
        group.daemons, group.addrs = Tally(), Tally(MAX_DETAIL * 4)
        group.names, group.users = Tally(), Tally()
        group.sources = Distinct()
        group.timeline = {}
        group.scan = ()
        group.transports = {}
        return report

    def _repeat(self, group: Group) -> GroupReport:
        """The last word on a quiet group: nothing new since its last report. Then forget it."""
        report = self._snapshot(group, "repeat", 0, group.last_seen)
        del self.groups[group.key]
        if group.level == 1:
            self._count_narrow(group, -1)
        self._changed[group.key] = None
        return report

    def _snapshot(self, group: Group, reason: str, events: int, first: float) -> GroupReport:
        new = events
        if group.fixed_daemon is None:
            daemons = group.daemons.top()
        else:
            daemons = ((group.fixed_daemon, new),) if new else ()
        if group.fixed_addr is None:
            addrs, more = group.addrs.top(), group.addrs.other
            sources, exact = group.sources.count(), group.sources.is_exact
        else:
            addrs, more = ((group.fixed_addr, new),) if new else (), 0
            sources, exact = (1 if new else 0), True
        return GroupReport(
            key=group.key,
            labels=group.labels,
            reason=reason,
            events=events,
            total=group.total,
            first_seen=first,
            last_seen=group.last_seen,
            group_first_seen=group.created,
            trusted=group.trusted,
            uid=group.uid,
            daemons=daemons,
            addrs=addrs,
            names=group.names.top(),
            users=group.users.top(),
            more_addrs=more,
            timeline=tuple(sorted(group.timeline.items())),
            sources=sources,
            sources_exact=exact,
            level=LEVELS[group.level],
            severity=group.severity,
            sinks=group.sinks,
            scan=group.scan,
            transports=tuple(sorted(group.transports.items())),
        )

    def _place(self, event: Event, key: Key, now: float, route: Destination) -> Group:
        """A group for an event of a new key, rolled up as far as the bounds require."""
        groups = self.groups
        level = 0
        if len(groups) >= self.max_groups:
            key, level, found = self._roll_up(event, key)
            if found is not None:
                return found
        group = Group(
            key,
            self._labels(event, key, level),
            event.trusted,
            event.uid,
            now,
            now + self.cfg.group_wait,
            level=level,
            severity=route.severity,
            sinks=route.sinks,
        )
        group.fix(self._group_by)
        groups[key] = group
        if level == 1:
            self._count_narrow(group, 1)
        return group

    def _count_narrow(self, group: Group, delta: int) -> None:
        """Track which /24 and /64 networks have a group: past the first reserve, a
        new source's network is spelled out only if it might have one."""
        # From the group's own labels: its key may predate a group_by change.
        net = dict(group.labels).get("client_addr")
        address = None if net is None else packed(net.partition("/")[0])
        if address is not None:
            prefix = address[: _NARROW[len(address)]]
            self._narrow[prefix] += delta
            if self._narrow[prefix] <= 0:
                del self._narrow[prefix]

    def _roll_up(self, event: Event, key: Key) -> tuple[Key, int, Group | None]:
        """The key (and level) a new source gets when the exact groups are all taken,
        with its group if that exists: its /24 or /64 within the first reserve, its /16
        or /48 within the second, else the overflow group. Networks are worked out only
        as far as needed: under a flood of new sources this runs for every event."""
        groups = self.groups
        limit = self.max_groups
        at = self._addr_at
        address = packed(key[at]) if at >= 0 and event.trusted else None
        for level in (1, 2):
            limit += self.reserve
            if address is not None and (
                level == 2
                or len(groups) < limit
                or address[: _NARROW[len(address)]] in self._narrow
            ):
                net = network(address, level)
                key = (*key[:at], net, *key[at + 1 :])
                found = groups.get(key)
                if found is not None:
                    return key, level, found
            # (Its /24 or /64 has no group and no room for one: no need to spell it out.)
            # Not an IP address: nothing to roll up by, so its own key takes a reserve place.
            if len(groups) < limit:
                return key, level, None
        key = (OVERFLOW,) if event.trusted else (OVERFLOW, "untrusted")
        return key, 3, groups.get(key)

    def export_all(self) -> list[dict[str, Any]]:
        """Every group as `restore` takes them: the state a successor starts from."""
        return [export(group) for group in self.groups.values()]

    def export(self, key: Key) -> dict[str, Any] | None:
        """One group's whole state as plain data (None if it no longer exists)."""
        group = self.groups.get(key)
        return None if group is None else export(group)

    def restore(self, states: list[dict[str, Any]]) -> None:
        """Bring saved groups back; a group whose timer passed while we were down is due now."""
        for state in states:
            group = _load(state)
            if tuple(n for n, _ in group.labels) == self._group_by:
                group.fix(self._group_by)
            else:
                group.unfix()  # made under another group_by: see Group.fix
            self.groups[group.key] = group
            if group.level == 1:
                self._count_narrow(group, 1)
            if group.new:
                self._schedule(group, group.due)
            elif group.notified:
                self._schedule(group, group.repeat_due)

    def _schedule(self, group: Group, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, group.key))
        if len(self._heap) > 4 * len(self.groups) + 1024:
            # Stale entries are dropped lazily at the top; this bounds the rest.
            self._heap = [e for e in self._heap if self._valid(e[2], e[0])]
            heapq.heapify(self._heap)

    @staticmethod
    def _untrusted_key(event: Event) -> Key:
        # One group per untrusted uid: never sharing a group (or its look) with real
        # alerts, and never more than one, whatever fields the sender makes up.
        # The parentheses cannot occur in a trusted key (no wire value holds them), so a
        # trusted group whose fields read "untrusted" and a uid can never be this one.
        return (UNTRUSTED, "unknown" if event.uid is None else str(event.uid))

    def _labels(self, event: Event, key: Key, level: int) -> Labels:
        """The key's names and values, made only when a group is created."""
        if level == 3:
            return (("group", OVERFLOW),)
        if not event.trusted:
            return (("reported_by_uid", key[1]),)
        return tuple(zip(self.cfg.group_by, key, strict=True))


def _new_bucket(timeline: dict[float, int], bucket: float) -> None:
    """A first event in `bucket`; past TIMELINE_MAX buckets the oldest two fold together."""
    timeline[bucket] = 1
    if len(timeline) > TIMELINE_MAX:
        first, second = sorted(timeline)[:2]
        timeline[second] += timeline.pop(first)
