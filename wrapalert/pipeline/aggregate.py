"""Grouping with Alertmanager's timing model, in bounded memory.

A group (key = the `group_by` field values, plus the sender's trust) waits
`group_wait` after its first event before its first notification, then
reports new activity at most every `group_interval`. A group with no new
activity for `repeat_interval` is forgotten (repeats of unchanged activity
are not sent yet). Groups falling due within `batch_window` of each other
are reported together, so a burst becomes one digest, not one per source.

Overload: at most `max_groups` groups; events of new keys beyond that go to
one overflow group. Counts are never lost, only less detailed.

Untrusted senders (uids outside trusted_uids: anyone on the machine) have a
fixed budget: one group per uid, whatever fields they send, reported at
most once per `untrusted_interval` after its first report. A local user can
neither spread over many groups nor make mail faster than that.

Time is injected: `add` and `collect` take `now`, so tests run on a fake clock.

Persistence: every changed group's key lands in `dirty` (and forgotten ones
in `dropped`); the owner saves `export(key)` for each and clears the sets.
`restore` brings saved groups back, timers included.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from wrapalert.config import DigestConfig
from wrapalert.model import MAX_DETAIL, TIMELINE_BUCKET, TIMELINE_MAX, Event, GroupReport, Tally

OVERFLOW = "(overflow)"
_PLAIN = ("trusted", "uid", "created", "due", "total", "new", "first_new", "last_seen", "notified")
_TALLIES = ("daemons", "addrs", "names", "users")


@dataclass(slots=True)
class _Group:
    key: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    trusted: bool
    uid: int | None
    created: float
    due: float
    total: int = 0
    new: int = 0
    first_new: float = 0.0
    last_seen: float = 0.0
    notified: bool = False
    daemons: Tally = field(default_factory=Tally)
    addrs: Tally = field(default_factory=lambda: Tally(MAX_DETAIL * 4))
    names: Tally = field(default_factory=Tally)
    users: Tally = field(default_factory=Tally)
    timeline: dict[float, int] = field(default_factory=dict)


class Aggregator:
    """Owns every group; the only place where events become reports."""

    def __init__(
        self, cfg: DigestConfig, max_groups: int, untrusted_interval: float = 3600.0
    ) -> None:
        self.cfg = cfg
        self.max_groups = max_groups
        self.untrusted_interval = untrusted_interval
        self.groups: dict[tuple[str, ...], _Group] = {}
        # (due, seq, key): lazily invalidated; a popped entry counts only if it matches.
        self._heap: list[tuple[float, int, tuple[str, ...]]] = []
        self._seq = 0
        self.dirty: set[tuple[str, ...]] = set()
        self.dropped: set[tuple[str, ...]] = set()

    @property
    def pending_events(self) -> int:
        return sum(g.new for g in self.groups.values())

    def add(self, event: Event, now: float) -> bool:
        """Count one event; True when this made a group due earlier than before."""
        key, labels = self._key(event)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_groups:
                # Trust stays part of the key even here: see _key.
                key = (OVERFLOW,) if event.trusted else (OVERFLOW, "untrusted")
                labels = (("group", OVERFLOW),)
                group = self.groups.get(key)
            if group is None:
                group = _Group(
                    key, labels, event.trusted, event.uid, now, now + self.cfg.group_wait
                )
                self.groups[key] = group
        self.dirty.add(key)
        woke = False
        if group.new == 0:
            group.first_new = now
            if group.notified:
                group.due = max(group.due, now)
            self._schedule(group)
            woke = True
        group.new += 1
        group.total += 1
        group.last_seen = now
        group.daemons.add(event.get("daemon"))
        group.addrs.add(event.get("client_addr"))
        group.names.add(event.get("client_name"))
        group.users.add(event.get("user"))
        _count_in_timeline(group.timeline, now)
        return woke

    def next_due(self) -> float | None:
        """When the earliest group with new activity falls due, if any."""
        while self._heap:
            due, _, key = self._heap[0]
            group = self.groups.get(key)
            if group is not None and group.new and group.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    def collect(self, now: float, *, force: bool = False) -> list[GroupReport]:
        """Reports of the groups due by `now`, with those due within the batch window after it.

        With `force`, every group with news (shutdown). Nothing is sent early
        on its own: the window only lets near-due groups join a digest that
        goes out anyway.
        """
        horizon = now + self.cfg.batch_window
        if force:
            due_groups = [g for g in self.groups.values() if g.new]
            self._heap.clear()
        elif (first := self.next_due()) is None or first > now:
            due_groups = []  # nothing is due: the window only gathers groups to go along
        else:
            due_groups = []
            while self._heap and self._heap[0][0] <= horizon:
                due, _, key = heapq.heappop(self._heap)
                group = self.groups.get(key)
                if group is not None and group.new and group.due == due:
                    due_groups.append(group)
        reports = [self._report(group, now, force=force) for group in due_groups]
        self._forget_idle(now)
        return reports

    def _report(self, group: _Group, now: float, *, force: bool) -> GroupReport:
        reason = "new activity" if group.notified else "new group"
        if force:
            reason = "shutdown flush"
        report = GroupReport(
            key=group.key,
            labels=group.labels,
            reason=reason,
            events=group.new,
            total=group.total,
            first_seen=group.first_new,
            last_seen=group.last_seen,
            group_first_seen=group.created,
            trusted=group.trusted,
            uid=group.uid,
            daemons=group.daemons.top(),
            addrs=group.addrs.top(),
            names=group.names.top(),
            users=group.users.top(),
            more_addrs=group.addrs.other,
            timeline=tuple(sorted(group.timeline.items())),
        )
        self.dirty.add(group.key)
        group.new = 0
        group.notified = True
        interval = self.cfg.group_interval
        if not group.trusted:
            interval = max(interval, self.untrusted_interval)
        group.due = now + interval
        group.daemons, group.addrs = Tally(), Tally(MAX_DETAIL * 4)
        group.names, group.users = Tally(), Tally()
        group.timeline = {}
        return report

    def export(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        """One group's whole state as plain data (None if it no longer exists)."""
        group = self.groups.get(key)
        if group is None:
            return None
        state = {name: getattr(group, name) for name in _PLAIN}
        state["key"], state["labels"] = list(group.key), [list(p) for p in group.labels]
        for name in _TALLIES:
            state[name] = getattr(group, name).to_dict()
        state["timeline"] = [[t, n] for t, n in group.timeline.items()]
        return state

    def restore(self, states: list[dict[str, Any]]) -> None:
        """Bring saved groups back; a group whose timer passed while we were down is due now."""
        for state in states:
            group = _Group(
                key=tuple(state["key"]),
                labels=tuple((a, b) for a, b in state["labels"]),
                **{name: state[name] for name in _PLAIN},
            )
            for name in _TALLIES:
                setattr(group, name, Tally.from_dict(state[name]))
            group.timeline = {float(t): int(n) for t, n in state["timeline"]}
            self.groups[group.key] = group
            if group.new:
                self._schedule(group)

    def _schedule(self, group: _Group) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (group.due, self._seq, group.key))

    def _forget_idle(self, now: float) -> None:
        limit = now - self.cfg.repeat_interval
        idle = [k for k, g in self.groups.items() if not g.new and g.last_seen < limit]
        for key in idle:
            del self.groups[key]
            self.dirty.discard(key)
            self.dropped.add(key)

    def _key(self, event: Event) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        if not event.trusted:
            # One group per untrusted uid: never sharing a group (or its look) with real
            # alerts, and never more than one, whatever fields the sender makes up.
            uid = "unknown" if event.uid is None else str(event.uid)
            return ("untrusted", uid), (("reported_by_uid", uid),)
        labels = tuple((name, event.get(name)) for name in self.cfg.group_by)
        return tuple(v for _, v in labels), labels


def _count_in_timeline(timeline: dict[float, int], now: float) -> None:
    """One event in its bucket; past TIMELINE_MAX buckets the oldest two fold together."""
    bucket = now - now % TIMELINE_BUCKET
    timeline[bucket] = timeline.get(bucket, 0) + 1
    if len(timeline) > TIMELINE_MAX:
        first, second = sorted(timeline)[:2]
        timeline[second] += timeline.pop(first)
