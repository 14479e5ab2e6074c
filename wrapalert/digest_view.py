"""The digest as templates see it: stories, sources, scans, roll-ups, a timeline, in a dict.

Pure functions of a Digest (no I/O), so the text and HTML templates stay
simple and this logic is tested with plain values. `context` documents
every key the templates may use.
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any

from wrapalert import story
from wrapalert.fleetwire import FLEET_PREFIX
from wrapalert.match import highest, severity_rank
from wrapalert.model import OVERFLOW, TIMELINE_BUCKET, Digest, GroupReport
from wrapalert.scanrule import network
from wrapalert.story import SILENCE_FOR, Story, StoryRule, silence_command

TOP_SOURCES = 30  # rows in the sources table; the rest are summed in one line
LIST_MAX = 20  # scans, roll-ups and untrusted reports listed; the rest are summed
PERSISTENT_AFTER = StoryRule().persistent  # the default of `[story] persistent`
TIMELINE_SLOTS = 20  # bars in the chart at most; buckets are merged to fit
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)  # minutes per bar
_COLUMNS = frozenset({"daemon", "client_addr"})  # labels the sources table shows as columns


def known(pairs: tuple[tuple[str, int], ...]) -> list[str]:
    """The values of (value, count) pairs, less libwrap's "unknown"."""
    return [value for value, _ in pairs if value not in ("unknown", "")]


def local_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def short_time(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def cell(value: object, width: int) -> str:
    """`value` in exactly `width` columns: cut with an ellipsis, or padded."""
    text = str(value)
    return text[: width - 1] + "…" if len(text) > width else text.ljust(width)


def fit(names: list[str], width: int) -> str:
    """As many of `names` as fit in `width` characters, joined by ", ", then ", …" when
    some are left out (within `width` too); a first name with no room is cut (its start
    says more than "…" alone)."""
    out = ""
    for i, name in enumerate(names):
        joined = f"{out}, {name}" if i else name
        more = i + 1 < len(names)
        if len(joined) + (3 if more else 0) > width:
            return f"{out}, …" if out else clip(name, width)
        out = joined
    return out


def tally(pairs: list[tuple[str, int]]) -> list[str]:
    """(value, count) pairs as "value 1,234" strings."""
    return [f"{value} {n:,}" for value, n in pairs]


def labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    return "  ".join(f"{field}={value}" for field, value in labels)


def wrap(value: object, width: int) -> list[str]:
    """`value` as lines of at most `width` characters, broken at spaces (a longer word, a
    path, stays whole); the templates print one line each (a newline in a value would be
    cleaned away as a control character)."""
    return textwrap.wrap(str(value), width, break_long_words=False, break_on_hyphens=False)


def clip(value: object, width: int) -> str:
    """`value` in at most `width` characters, cut with an ellipsis."""
    text = str(value)
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def duration(seconds: float) -> str:
    """A short human duration: "45 s", "12 min", "3 h 5 min", "4 h", "2 d 4 h", "30 d"."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        minutes = s % 3600 // 60
        return f"{s // 3600} h {minutes} min" if minutes else f"{s // 3600} h"
    hours = s % 86400 // 3600
    return f"{s // 86400} d {hours} h" if hours else f"{s // 86400} d"


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 3 -> "3rd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def repeat_text(nth: int, length: float) -> str:
    """A repeat offender's ban in a few words ("3rd ban, 4 h"); "" for a first ban (or one
    that does not count): its length is the rule's own."""
    return f"{ordinal(nth)} ban, {duration(length)}" if nth > 1 else ""


# -- the template context ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One row of the sources table: a trusted address (over all its groups), a swept
    network (its addresses folded into one row), or a group of several addresses."""

    addr: str  # the address, the network, or a group's busiest address and "+N"
    name: str  # its most frequent known name, "N addresses" for a network, or ""
    daemons: tuple[str, ...]  # busiest first
    daemon_counts: tuple[tuple[str, int], ...]  # the same, each with its refusals
    events: int
    total: int
    first_seen: float
    last_seen: float
    since: float
    status: str  # "new" | "repeat" | "persistent": see `status`
    labels: str
    extra: str  # group_by labels the columns do not show, such as user=...
    silence: str  # the command that silences it, or "" (no usable address)
    severity: str = "warning"  # the highest route severity of its groups
    story: str = ""  # the kind of the story that tells it, or ""
    unverified: str = ""  # the quiet marker when the kernel did not vouch for it, or ""


@dataclass(frozen=True, slots=True)
class Rollup:
    """Events reported without rows of their own."""

    labels: str
    kind: str  # "overflow" | "network" | "wide network" (the Aggregator's levels) | "detail"
    events: int
    beyond: int  # events from addresses not listed one by one
    addrs: int  # addresses listed one by one
    sources: str  # distinct addresses, "~N" when estimated
    top: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Slot:
    """One bar of the timeline chart; widths are percent of the busiest bar."""

    start: float
    label: str
    trusted: int
    untrusted: int
    trusted_width: int
    untrusted_width: int
    bar: str  # the same bar for the text part, at most 40 characters


def unverified(groups: list[GroupReport]) -> str:
    """The quiet marker for a row whose refusals the kernel did not vouch for (no completed
    TCP handshake from that address was seen here: a UDP service's client address is
    whatever the datagram said). "" when every refusal was vouched for, or for reports
    made before transports were counted."""
    counts: Counter[str] = Counter()
    for g in groups:
        counts.update(dict(g.transports))
    other = {t: n for t, n in sorted(counts.items()) if t != "tcp"}
    if not other:
        return ""
    if counts["tcp"]:
        kinds = ", ".join(f"{t} {n:,}" for t, n in other.items())
        share = f"{sum(other.values()):,} of {counts.total():,}"
        return f"source address not verified for {share} ({kinds})"
    if set(other) == {"udp"}:
        return "udp: source address not verified"
    return "source address not verified"


def status(g: GroupReport, window_start: float) -> str:
    """The group's status by the default `[story] persistent` (see story.status)."""
    return story.status(g, window_start, PERSISTENT_AFTER)


def _level(g: GroupReport) -> str:
    """The Aggregator's roll-up level; the overflow key also marks reports made before levels."""
    return "overflow" if g.key[:1] == (OVERFLOW,) else g.level


_WORST = ("persistent", "repeat", "new")


def _row(
    label: str, shape: str, groups: list[GroupReport], window_start: float, persistent: float
) -> Source:
    """One row over `groups`: all those of one address, of one swept network, or one group
    of several addresses (`shape` "address", "network" or "group")."""
    daemons: Counter[str] = Counter()
    names: Counter[str] = Counter()
    addrs: set[str] = set()
    for g in groups:
        daemons.update(dict(g.daemons))
        names.update({n: c for n, c in g.names if n not in ("unknown", "")})
        addrs.update(a for a, _ in g.addrs)
    counted = tuple(sorted(daemons.items(), key=lambda kv: (-kv[1], kv[0])))
    ordered = tuple(d for d, _ in counted)
    statuses = {story.status(g, window_start, persistent) for g in groups}
    alone = groups[0] if len(groups) == 1 else None  # its labels are the row's
    known_name = names.most_common(1)[0][0] if names else ""
    return Source(
        addr=label,
        name=f"{len(addrs):,} addresses" if shape == "network" else known_name,
        daemons=ordered,
        daemon_counts=counted,
        events=sum(g.events for g in groups),
        total=sum(g.total for g in groups),
        first_seen=min(g.first_seen for g in groups),
        last_seen=max(g.last_seen for g in groups),
        since=min(g.group_first_seen for g in groups),
        status=next(s for s in _WORST if s in statuses),
        labels=labels_text(alone.labels) if alone else "",
        extra=labels_text(tuple(kv for kv in alone.labels if kv[0] not in _COLUMNS))
        if alone
        else "",
        silence=silence_command(ordered, label) if shape != "group" else "",
        severity=highest(g.severity for g in groups),
        unverified=unverified(groups),
    )


def sources_table(
    trusted: list[GroupReport],
    told: list[Story],
    window_start: float,
    persistent: float = PERSISTENT_AFTER,
) -> list[Source]:
    """The rows: one per address (its groups together), one per swept network (its
    addresses folded), one per group of several addresses; by severity, story, count."""
    sweeps = {s.actor for s in told if s.kind == "sweep"}
    kinds = {s.actor: s.kind for s in reversed(told) if s.actor}  # the most severe wins
    # (shape, label, the group's key for a group row) -> its groups
    rows: dict[tuple[str, str, tuple[str, ...]], list[GroupReport]] = defaultdict(list)
    for g in trusted:
        if _level(g) != "exact":
            continue  # rolled up: the roll-ups list tells it
        addr = story.single(g)
        if addr is None:
            head = g.addrs[0][0] if g.addrs else "?"
            rows["group", f"{head} +{max(len(g.addrs) - 1, 0)}", g.key].append(g)
        elif (net := network(addr)) in sweeps and net is not None:
            rows["network", net, ()].append(g)
        else:
            rows["address", addr, ()].append(g)
    out = []
    for (shape, label, _), groups in rows.items():
        row = _row(label, shape, groups, window_start, persistent)
        out.append(replace(row, story=kinds.get(label, "") if shape != "group" else ""))
    rank = {kind: i for i, kind in enumerate(story.KINDS)}
    return sorted(
        out,
        key=lambda r: (-severity_rank(r.severity), rank.get(r.story, 99), -r.events, r.addr),
    )


def rollups(groups: list[GroupReport]) -> list[Rollup]:
    """Groups rolled up by network or into the overflow group, and addresses past the bound."""
    out = []
    for g in groups:
        kind = _level(g) if _level(g) != "exact" else "detail"
        if kind == "detail" and not g.more_addrs:
            continue
        sources = max(g.sources, len(g.addrs))
        estimate = "" if g.sources_exact else "~"
        out.append(
            Rollup(
                labels_text(g.labels),
                kind,
                g.events,
                g.more_addrs,
                len(g.addrs),
                f"{estimate}{sources:,}",
                g.addrs[:5],
            )
        )
    return out


def timeline(groups: list[GroupReport], slots: int = TIMELINE_SLOTS) -> tuple[float, list[Slot]]:
    """Seconds per bar and the bars: every group's per-minute counts, merged to fit `slots`."""
    counts: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for g in groups:
        for start, n in g.timeline:
            counts[start][0 if g.trusted else 1] += n
    if not counts:
        return 0.0, []
    first, last = min(counts), max(counts)
    minutes = int((last - first) // TIMELINE_BUCKET) + 1
    per = next((s for s in _STEPS if s * slots >= minutes), -(-minutes // slots))
    step = per * TIMELINE_BUCKET
    origin = first - first % step
    bars = [[0, 0] for _ in range(int((last - origin) // step) + 1)]
    for start, (trusted, untrusted) in counts.items():
        bar = bars[int((start - origin) // step)]
        bar[0] += trusted
        bar[1] += untrusted
    peak = max(t + u for t, u in bars)
    fmt = "%H:%M" if last - first < 86400 else "%m-%d %H:%M"

    def width(n: int, scale: int) -> int:
        return max(1, round(n * scale / peak)) if n else 0

    return step, [
        Slot(
            start=origin + i * step,
            label=time.strftime(fmt, time.localtime(origin + i * step)),
            trusted=t,
            untrusted=u,
            trusted_width=width(t, 100),
            untrusted_width=width(u, 100),
            bar="#" * width(t, 40) + "~" * width(u, 40),
        )
        for i, (t, u) in enumerate(bars)
    ]


def context(digest: Digest, rule: StoryRule | None = None) -> dict[str, Any]:
    """What templates see (filters: when, hms, thousands, known, cell, fit, tally, duration,
    clip).

    Only trusted reports are counted or named before the untrusted story's line (issue 15):
    digest, host; events, sources (trusted, as X-Wrapalert-Events and -Sources count them);
    untrusted_events (as X-Wrapalert-Untrusted counts them); new_sources (addresses of
    trusted groups whose status is "new"); untrusted_sources (addresses in untrusted
    reports); start, end (the window of the new trusted events, else of all); daemons:
    [(name, count)] (trusted); stories: [story.Story], most severe first, and lead (the
    first of a kind in story.LEADS, or None); held, silenced, merged; flushed (groups sent
    early at shutdown), flushed_by_hand (by `wrapalert flush`); test (a test-alert: its group
    is no source); sources_table: [Source] (see `sources_table`, at most TOP_SOURCES) with
    more_groups and more_events for the rest; scans: [Scan] and more_scans; rollups:
    [Rollup], more_rollups, more_rollup_events; untrusted_shown: [GroupReport],
    more_untrusted, more_untrusted_events; quiet: [GroupReport] (groups with nothing new
    since their last report, now forgotten); step, timeline: [Slot] (trusted events);
    silence_for; top_silence (the command that silences the busiest row that has one, or
    ""; shown under every sources table); unverified (whether a row of the table carries
    the not-verified marker);
    groups, trusted_groups, untrusted_groups: [GroupReport], every report. Lists hold at
    most LIST_MAX unless said otherwise.
    """
    rule = rule or StoryRule()
    groups = sorted(digest.groups, key=lambda g: (-g.events, g.key))
    quiet = [g for g in groups if g.reason == "repeat"]
    # A test-alert's group reports nothing: no source row, no count.
    active = [g for g in groups if g.reason not in ("repeat", "test")]
    trusted = [g for g in active if g.trusted]
    untrusted = [g for g in active if not g.trusted]
    daemons: Counter[str] = Counter()
    for g in trusted:
        daemons.update(dict(g.daemons))
    timed = trusted or active
    start = min((g.first_seen for g in timed), default=digest.created)
    end = max((g.last_seen for g in timed), default=digest.created)
    told = story.stories(digest, rule, start)
    rows = sources_table(trusted, told, start, rule.persistent)
    table = rows[:TOP_SOURCES]
    # The busiest row (not the first: rows sort by severity) that can be silenced at all.
    silences = [s.silence for s in sorted(table, key=lambda s: -s.events) if s.silence]
    step, slots = timeline(trusted)
    found, rolled = story.scans(trusted), rollups(trusted)
    persistent = rule.persistent
    return {
        "digest": digest,
        "host": digest.host,
        "groups": groups,
        "trusted_groups": [g for g in groups if g.trusted],
        "untrusted_groups": [g for g in groups if not g.trusted],
        "daemons": sorted(daemons.items(), key=lambda kv: (-kv[1], kv[0])),
        "events": digest.trusted_events,
        "untrusted_events": digest.untrusted_events,
        "sources": digest.trusted_sources,
        "new_sources": len(
            {a for g in trusted if story.status(g, start, persistent) == "new" for a, _ in g.addrs}
        ),
        "untrusted_sources": len({a for g in untrusted for a, _ in g.addrs}),
        "stories": told,
        "lead": next((s for s in told if s.kind in story.LEADS), None),
        "held": digest.held,
        "silenced": digest.silenced,
        "merged": digest.merged,
        "flushed": sum(g.reason == "shutdown flush" for g in groups),
        "flushed_by_hand": sum(g.reason == "manual flush" for g in groups),
        "test": any(g.reason == "test" for g in groups),
        "start": start,
        "end": end,
        "sources_table": table,
        "more_groups": len(rows[TOP_SOURCES:]),
        "more_events": sum(r.events for r in rows[TOP_SOURCES:]),
        "scans": found[:LIST_MAX],
        "more_scans": len(found[LIST_MAX:]),
        "rollups": rolled[:LIST_MAX],
        "more_rollups": len(rolled[LIST_MAX:]),
        "more_rollup_events": sum(r.events for r in rolled[LIST_MAX:]),
        "untrusted_shown": untrusted[:LIST_MAX],
        "more_untrusted": len(untrusted[LIST_MAX:]),
        "more_untrusted_events": sum(g.events for g in untrusted[LIST_MAX:]),
        "quiet": quiet[:LIST_MAX],
        "more_quiet": len(quiet[LIST_MAX:]),
        "step": step,
        "timeline": slots,
        "silence_for": SILENCE_FOR,
        "top_silence": silences[0] if silences else "",
        "banned": banned(digest),  # the nftables sink's section (issue 12)
        "fleet_banned": banned(digest, fleet=True),  # bans followed from other hosts
        "unverified": any(s.unverified for s in table),
    }


def banned(digest: Digest, *, fleet: bool = False) -> list[dict[str, Any]]:
    """The digest's "Banned" section: each note with the command that undoes it (for a
    ban still in force) and, for a repeat offender's ban, which ban it is and how long
    ("3rd ban, 4 h"). A "more" note's target is the count of notes left out. This
    host's own bans, or (`fleet`) those followed from other hosts, whose notes' reasons
    begin "fleet: banned on" (daemon/bans.py)."""
    commands = {"banned": "wrapalert ban del {}", "would ban": "", "refused": ""}
    return [
        {
            "action": note.action,
            "target": note.target,
            "reason": note.reason,
            "until": note.until,
            "repeat": repeat_text(note.nth, note.length)
            if note.action in ("banned", "would ban")
            else "",
            "command": commands.get(note.action, "").format(note.target),
        }
        for note in digest.banned
        if note.reason.startswith(FLEET_PREFIX) == fleet
    ]


# -- rendering -----------------------------------------------------------------------------
