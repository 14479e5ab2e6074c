"""The digest as templates see it: sources, scans, roll-ups, a timeline, in a dict.

Pure functions of a Digest (no I/O), so the text and HTML templates stay
simple and this logic is tested with plain values. `context` documents
every key the templates may use.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from wrapalert.model import TIMELINE_BUCKET, Digest, GroupReport
from wrapalert.pipeline.aggregate import OVERFLOW
from wrapalert.scanrule import ScanSignal, network

TOP_SOURCES = 30  # rows in the sources table; the rest are summed in one line
LIST_MAX = 20  # scans, roll-ups and untrusted reports listed; the rest are summed
PERSISTENT_AFTER = 3600.0  # a group older than this before the window is "persistent"
TIMELINE_SLOTS = 20  # bars in the chart at most; buckets are merged to fit
SILENCE_FOR = "2h"
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
    """As many of `names` as fit in `width` characters, joined by ", ", then "…"."""
    out = ""
    for i, name in enumerate(names):
        joined = f"{out}, {name}" if i else name
        if len(joined) > width:
            return f"{out}, …" if out else "…"
        out = joined
    return out


def tally(pairs: list[tuple[str, int]]) -> list[str]:
    """(value, count) pairs as "value 1,234" strings."""
    return [f"{value} {n:,}" for value, n in pairs]


def labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    return "  ".join(f"{field}={value}" for field, value in labels)


def duration(seconds: float) -> str:
    """A short human duration: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


# -- the template context ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One row of the top-sources table: a trusted group as the reader sees it."""

    addr: str  # the group's address, or its busiest one and "+N"
    name: str  # its most frequent known name, or ""
    daemons: tuple[str, ...]
    events: int
    total: int
    first_seen: float
    last_seen: float
    since: float
    status: str  # "new" | "repeat" | "persistent": see `status`
    labels: str
    extra: str  # group_by labels the columns do not show, such as user=...
    silence: str  # the command that silences it, or "" (no usable address)


@dataclass(frozen=True, slots=True)
class Scan:
    """A scan the daemon's detector signalled (wrapalert.scanrule): one address trying
    several daemons (addrs == 1), or a sweep of one /24 or /64; numbers from this digest."""

    target: str
    addrs: int
    events: int
    daemons: tuple[str, ...]
    silence: str


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


def status(g: GroupReport, window_start: float) -> str:
    """new: first report of the group (a flush counts as new when nothing came before it);
    persistent: already seen over PERSISTENT_AFTER before this digest's window, and still
    active (it is in this digest); repeat: reported before, more recently."""
    if g.reason == "new group" or (g.reason == "shutdown flush" and g.total == g.events):
        return "new"
    if g.group_first_seen < window_start - PERSISTENT_AFTER:
        return "persistent"
    return "repeat"


def silence_command(daemons: tuple[str, ...] | list[str], client: str) -> str:
    """The `wrapalert silence add` line for a source, shell-quoted (values are attacker text)."""
    if client in ("unknown", ""):
        return ""
    argv = ["wrapalert", "silence", "add", "--for", SILENCE_FOR]
    if len(daemons) == 1:
        argv.append(f"daemon={daemons[0]}")
    return shlex.join([*argv, f"client={client}"])


def _level(g: GroupReport) -> str:
    """The Aggregator's roll-up level; the overflow key also marks reports made before levels."""
    return "overflow" if g.key[:1] == (OVERFLOW,) else g.level


def _source(g: GroupReport, window_start: float) -> Source:
    addrs = [a for a, _ in g.addrs]
    single = len(addrs) == 1 and not g.more_addrs
    addr = addrs[0] if single else f"{addrs[0] if addrs else '?'} +{max(len(addrs) - 1, 0)}"
    daemons = tuple(d for d, _ in g.daemons)
    names = known(g.names)
    return Source(
        addr=addr,
        name=names[0] if names else "",
        daemons=daemons,
        events=g.events,
        total=g.total,
        first_seen=g.first_seen,
        last_seen=g.last_seen,
        since=g.group_first_seen,
        status=status(g, window_start),
        labels=labels_text(g.labels),
        extra=labels_text(tuple(kv for kv in g.labels if kv[0] not in _COLUMNS)),
        silence=silence_command(daemons, addrs[0]) if single else "",
    )


def _signals(groups: list[GroupReport]) -> dict[str, ScanSignal]:
    """The detector's signals in these groups by target; of two for one target (it can
    signal again after a quiet window), the one that saw more addresses."""
    signals: dict[str, ScanSignal] = {}
    for values in (values for g in groups for values in g.scan):
        signal = ScanSignal.from_tuple(values)
        seen = signals.get(signal.target) if signal is not None else None
        if signal is not None and (seen is None or signal.sources > seen.sources):
            signals[signal.target] = signal
    return signals


def scans(groups: list[GroupReport]) -> list[Scan]:
    """The scans the daemon's detector signalled into these groups, one row per target,
    busiest first. Nothing else is called a scan: the detector counts within its `[scan]`
    window, possibly across digests, and `status` counts the same signals.

    A row's events and addresses are this digest's, of the groups the target covers;
    its daemons are those the detector saw and those in this digest."""
    signals = _signals(groups)
    if not signals:
        return []
    sweeps = any(s.kind == "sweep" for s in signals.values())
    # target -> (address, its events, daemons of its group when they are the address's)
    covered: dict[str, list[tuple[str, int, tuple[str, ...]]]] = defaultdict(list)
    for g in groups:
        own = len(g.addrs) == 1 and not g.more_addrs  # the group's daemons are the address's
        names = tuple(d for d, _ in g.daemons)
        for addr, n in g.addrs:
            if addr in signals:
                covered[addr].append((addr, n, names if own else ()))
            net = network(addr) if sweeps else None
            if net is not None and net in signals:
                covered[net].append((addr, n, names))
    out = []
    for target, signal in signals.items():
        rows = covered[target]
        daemons = tuple(sorted({*signal.daemons, *(d for _, _, ds in rows for d in ds)}))
        if signal.kind == "daemons":
            addrs, silence = 1, silence_command((), target)
        else:
            addrs = max(signal.sources, len({a for a, _, _ in rows}))
            silence = silence_command(daemons, target)
        out.append(Scan(target, addrs, sum(n for _, n, _ in rows), daemons, silence))
    return sorted(out, key=lambda s: (-s.events, s.target))


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


def context(digest: Digest) -> dict[str, Any]:
    """What templates see (filters: when, hms, thousands, known, cell, fit, tally, duration).

    digest, host; events, sources (as the X-Wrapalert-* headers count them); new_sources
    (addresses of trusted groups whose status is "new"); untrusted_sources (addresses in
    untrusted reports); start, end (the window of the new events); daemons: [(name, count)];
    held, silenced, merged; flushed (groups sent early at shutdown); sources_table: [Source]
    (trusted, not rolled up, busiest first, at most TOP_SOURCES) with more_groups and
    more_events for the rest; scans: [Scan] and more_scans; rollups: [Rollup], more_rollups,
    more_rollup_events; untrusted_shown: [GroupReport], more_untrusted,
    more_untrusted_events; quiet: [GroupReport] (groups with nothing new since their last
    report, now forgotten); step, timeline: [Slot]; silence_for; top_silence (the command
    for the busiest source that has one, or ""); groups, trusted_groups, untrusted_groups:
    [GroupReport], every report. Lists hold at most LIST_MAX unless said otherwise.
    """
    groups = sorted(digest.groups, key=lambda g: (-g.events, g.key))
    quiet = [g for g in groups if g.reason == "repeat"]
    active = [g for g in groups if g.reason != "repeat"]
    trusted = [g for g in active if g.trusted]
    untrusted = [g for g in active if not g.trusted]
    daemons: Counter[str] = Counter()
    for g in active:
        daemons.update(dict(g.daemons))
    start = min((g.first_seen for g in active), default=digest.created)
    end = max((g.last_seen for g in active), default=digest.created)
    rows = [g for g in trusted if _level(g) == "exact"]
    table = [_source(g, start) for g in rows[:TOP_SOURCES]]
    silences = [s.silence for s in table if s.silence]
    step, slots = timeline(active)
    found, rolled = scans(trusted), rollups(trusted)
    return {
        "digest": digest,
        "host": digest.host,
        "groups": groups,
        "trusted_groups": [g for g in groups if g.trusted],
        "untrusted_groups": [g for g in groups if not g.trusted],
        "daemons": sorted(daemons.items(), key=lambda kv: (-kv[1], kv[0])),
        "events": digest.events,
        "sources": digest.sources,
        "new_sources": len({a for g in trusted if status(g, start) == "new" for a, _ in g.addrs}),
        "untrusted_sources": len({a for g in untrusted for a, _ in g.addrs}),
        "held": digest.held,
        "silenced": digest.silenced,
        "merged": digest.merged,
        "flushed": sum(g.reason == "shutdown flush" for g in groups),
        "test": any(g.reason == "test" for g in groups),
        "start": start,
        "end": end,
        "sources_table": table,
        "more_groups": len(rows[TOP_SOURCES:]),
        "more_events": sum(g.events for g in rows[TOP_SOURCES:]),
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
    }


def banned(digest: Digest) -> list[dict[str, Any]]:
    """The digest's "Banned" section: each note with the command that undoes it (for a
    ban still in force). A "more" note's target is the count of notes left out."""
    commands = {"banned": "wrapalert ban del {}", "would ban": "", "refused": ""}
    return [
        {
            "action": action,
            "target": target,
            "reason": reason,
            "until": until,
            "command": commands.get(action, "").format(target),
        }
        for action, target, reason, until in digest.banned
    ]


# -- rendering -----------------------------------------------------------------------------
