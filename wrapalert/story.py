"""What a digest is about, in a few stories: the lead block, the subject, the summaries.

Each story kind has one small classifier, a pure function of the digest's
group reports (no I/O, no clock), with its thresholds from `[story]`
(`StoryRule`) and, for scans and sweeps, the daemon's own detector: a scan
or a sweep is a story only when the detector signalled it into a group
(wrapalert.scanrule), so the mail, its X-Wrapalert-Scans and `status` agree.

Kinds, most severe first (KINDS): scan (one address, several daemons),
sweep (many addresses of one /24 or /64), brute force (one address, at
least `brute_force` refusals by one daemon), repeat (addresses reported
before, or persistent), probes (the other new addresses, summed in one
story), untrusted (reports by local users: counts and uids only, never their
text), held and silenced (what the mail rate limit or a silence kept back).

An address is told in one story at most: the most severe that claims it.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from wrapalert.model import Digest, GroupReport
from wrapalert.scanrule import ScanRule, ScanSignal, network

KINDS = ("scan", "sweep", "brute force", "repeat", "probes", "untrusted", "held", "silenced")
LEADS = KINDS[:4]  # the kinds a subject names; the others are counts
SILENCE_FOR = "2h"
FLUSHES = ("shutdown flush", "manual flush")  # reasons of a report sent before its timer


@dataclass(frozen=True, slots=True)
class StoryRule:
    """The thresholds of the stories the scan detector does not decide (`[story]`)."""

    brute_force: int = 20  # refusals of one address by one daemon in one digest
    persistent: float = 3600.0  # seconds a group was known before the window: "persistent"


@dataclass(frozen=True, slots=True)
class Story:
    """One line of the lead block: what, who, how much, and the command that acts on it.

    `line` and `subject` are built only from validated values (addresses, networks,
    daemon names of trusted reports, counts); an untrusted story carries only counts
    and uids."""

    kind: str  # one of KINDS
    actor: str  # the address or network, "" for summaries
    events: int
    addrs: int
    daemons: tuple[str, ...]
    text: str  # the lead block's words after the kind, before the daemons it lists
    subject: str  # short, for the subject line
    command: str = ""  # the command that acts on it, or ""
    listed: tuple[str, ...] = ()  # daemons named after the text (a template cuts them to fit)

    @property
    def line(self) -> str:
        """The whole line after the kind: the text, then the daemons it lists."""
        return f"{self.text}: {', '.join(self.listed)}" if self.listed else self.text

    @property
    def rank(self) -> int:
        return KINDS.index(self.kind)


@dataclass(frozen=True, slots=True)
class Scan:
    """A scan the daemon's detector signalled (wrapalert.scanrule): one address trying
    several daemons (addrs == 1), or a sweep of one /24 or /64; numbers from this digest."""

    target: str
    addrs: int
    events: int
    daemons: tuple[str, ...]
    silence: str
    kind: str = "daemons"  # the ScanSignal kind: "daemons" | "sweep"


def silence_command(daemons: tuple[str, ...] | list[str], client: str) -> str:
    """The `wrapalert silence add` line for a source, shell-quoted (values are attacker text)."""
    if client in ("unknown", ""):
        return ""
    argv = ["wrapalert", "silence", "add", "--for", SILENCE_FOR]
    if len(daemons) == 1:
        argv.append(f"daemon={daemons[0]}")
    return shlex.join([*argv, f"client={client}"])


def status(g: GroupReport, window_start: float, persistent: float = 3600.0) -> str:
    """new: first report of the group (a flush counts as new when nothing came before it);
    persistent: already seen over `persistent` seconds before this digest's window, and
    still active (it is in this digest); repeat: reported before, more recently."""
    if g.reason == "new group" or (g.reason in FLUSHES and g.total == g.events):
        return "new"
    if g.group_first_seen < window_start - persistent:
        return "persistent"
    return "repeat"


def single(g: GroupReport) -> str | None:
    """The group's one client address, when it has exactly one (else None)."""
    if len(g.addrs) == 1 and not g.more_addrs and g.level == "exact":
        return g.addrs[0][0]
    return None


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


# -- scans and sweeps: the detector's signals --------------------------------------------


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
    """The scans the daemon's detector signalled into these (trusted) groups, one per
    target, busiest first. Nothing else is called a scan: the detector counts within its
    `[scan]` window, possibly across digests, and `status` counts the same signals.

    A scan's events and addresses are this digest's, of the groups the target covers;
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
        events = sum(n for _, n, _ in rows)
        out.append(Scan(target, addrs, events, daemons, silence, signal.kind))
    return sorted(out, key=lambda s: (-s.events, s.target))


def scan_stories(found: list[Scan]) -> list[Story]:
    """One story per address the detector saw trying several daemons."""
    return [
        Story(
            "scan",
            s.target,
            s.events,
            1,
            s.daemons,
            f"{s.target} tried {_plural(len(s.daemons), 'daemon')}, {s.events:,} refused",
            f"scan from {s.target} ({_plural(len(s.daemons), 'daemon')})",
            s.silence,
            s.daemons,
        )
        for s in found
        if s.kind == "daemons"
    ]


def sweep_stories(found: list[Scan]) -> list[Story]:
    """One story per network the detector saw many addresses of."""
    return [
        Story(
            "sweep",
            s.target,
            s.events,
            s.addrs,
            s.daemons,
            f"{s.target}: {_plural(s.addrs, 'address', 'addresses')}, {s.events:,} refused",
            f"sweep of {s.target} ({_plural(s.addrs, 'address', 'addresses')})",
            s.silence,
            s.daemons,
        )
        for s in found
        if s.kind == "sweep"
    ]


# -- the digest's own numbers --------------------------------------------------------------


def brute_force(groups: list[GroupReport], threshold: int) -> list[Story]:
    """Addresses refused at least `threshold` times by one daemon in this digest, busiest
    first (one story per address: its busiest such daemon)."""
    counts: Counter[tuple[str, str]] = Counter()
    for g in groups:
        addr = single(g)
        if addr is not None and g.trusted:
            for daemon, n in g.daemons:
                counts[addr, daemon] += n
    best: dict[str, tuple[str, int]] = {}
    for (addr, daemon), n in counts.items():
        if n >= threshold and n > best.get(addr, ("", 0))[1]:
            best[addr] = (daemon, n)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [
        Story(
            "brute force",
            addr,
            n,
            1,
            (daemon,),
            f"{addr} on {daemon}: {n:,} refused",
            f"brute force from {addr} on {daemon} ({_plural(n, 'try', 'tries')})",
            silence_command((daemon,), addr),
        )
        for addr, (daemon, n) in ranked
    ]


@dataclass(frozen=True, slots=True)
class _Address:
    """One trusted address's activity in this digest, over its single-address groups."""

    events: int
    daemons: tuple[str, ...]
    status: str  # the worst of its groups: persistent > repeat > new
    since: float


def addresses(
    groups: list[GroupReport], window_start: float, persistent: float
) -> dict[str, _Address]:
    """Each trusted single-address group's address with its events, daemons and status."""
    events: Counter[str] = Counter()
    daemons: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: dict[str, set[str]] = defaultdict(set)
    since: dict[str, float] = {}
    for g in groups:
        addr = single(g)
        if addr is None or not g.trusted:
            continue
        events[addr] += g.events
        daemons[addr].update(dict(g.daemons))
        statuses[addr].add(status(g, window_start, persistent))
        since[addr] = min(since.get(addr, g.group_first_seen), g.group_first_seen)
    order = ("persistent", "repeat", "new")
    return {
        addr: _Address(
            n,
            tuple(d for d, _ in daemons[addr].most_common()),
            next(s for s in order if s in statuses[addr]),
            since[addr],
        )
        for addr, n in events.items()
    }


def repeat_offenders(seen: dict[str, _Address]) -> list[Story]:
    """Addresses reported before (repeat) or known for long (persistent), busiest first."""
    ranked = sorted(
        ((a, s) for a, s in seen.items() if s.status != "new"),
        key=lambda kv: (-kv[1].events, kv[0]),
    )
    return [
        Story(
            "repeat",
            addr,
            s.events,
            1,
            s.daemons,
            f"{addr} {s.status}, {s.events:,} refused",
            f"{s.status} offender {addr} ({_plural(s.events, 'try', 'tries')})",
            silence_command(s.daemons, addr),
            s.daemons,
        )
        for addr, s in ranked
    ]


def probes(seen: dict[str, _Address]) -> list[Story]:
    """The new addresses no other story told, summed in one story with their daemons."""
    if not seen:
        return []
    events = sum(s.events for s in seen.values())
    daemons: Counter[str] = Counter()
    for s in seen.values():
        daemons.update(dict.fromkeys(s.daemons, 1))
    names = tuple(d for d, _ in sorted(daemons.items(), key=lambda kv: (-kv[1], kv[0])))
    n = len(seen)
    return [
        Story(
            "probes",
            next(iter(seen)) if n == 1 else "",
            events,
            n,
            names,
            f"{_plural(n, 'other new address', 'other new addresses')}, {events:,} refused",
            f"{_plural(n, 'probe')} ({events:,} refused)",
            "",
            names,
        )
    ]


def untrusted(groups: list[GroupReport]) -> list[Story]:
    """Reports by local users, as one story of counts and uids: never their text."""
    reports = [g for g in groups if not g.trusted]
    if not reports:
        return []
    events = sum(g.events for g in reports)
    uids = sorted({g.uid for g in reports if g.uid is not None})
    who = ", ".join(map(str, uids[:5])) + (f" +{len(uids) - 5}" if len(uids) > 5 else "")
    who = f"uid{'s' if len(uids) > 1 else ''} {who}" if uids else "an unknown uid"
    line = f"{_plural(events, 'untrusted report')} from {who}, see below"
    return [Story("untrusted", "", events, 0, (), line, line)]


def held_back(digest: Digest) -> list[Story]:
    """What the mail rate limit held back (reported here, late) and what silences kept out."""
    out = []
    if digest.held:
        merged = f" ({digest.merged} digests merged)" if digest.merged > 1 else ""
        out.append(
            Story(
                "held",
                "",
                digest.held,
                0,
                (),
                f"{_plural(digest.held, 'event')} held back by the rate limit, sent late{merged}",
                f"{digest.held:,} held back",
            )
        )
    if digest.silenced:
        out.append(
            Story(
                "silenced",
                "",
                digest.silenced,
                0,
                (),
                f"{_plural(digest.silenced, 'event')} silenced since the last digest, not listed",
                f"{digest.silenced:,} silenced",
                "wrapalert silence list",
            )
        )
    return out


def stories(digest: Digest, rule: StoryRule, window_start: float) -> list[Story]:
    """Every story of the digest, most severe first; each address in one story at most."""
    active = [g for g in digest.groups if g.reason != "repeat"]
    trusted = [g for g in active if g.trusted]
    found = scans(trusted)
    told: list[Story] = [*scan_stories(found), *sweep_stories(found)]
    claimed = {s.actor for s in told}
    nets = {s.actor for s in told if s.kind == "sweep"}

    def unclaimed(addr: str) -> bool:
        return addr not in claimed and network(addr) not in nets

    for s in brute_force(trusted, rule.brute_force):
        if unclaimed(s.actor):
            told.append(s)
            claimed.add(s.actor)
    seen = {
        a: s for a, s in addresses(trusted, window_start, rule.persistent).items() if unclaimed(a)
    }
    told += repeat_offenders(seen)
    told += probes({a: s for a, s in seen.items() if s.status == "new"})
    told += untrusted(active)
    told += held_back(digest)
    return told


# -- held records: the forwarding sinks' summaries ----------------------------------------


def _tally(value: object) -> dict[str, int]:
    """A held record's {value: count} object, whatever reached it, as plain counts."""
    if not isinstance(value, dict):
        return {}
    return {str(k): n for k, n in value.items() if isinstance(n, int) and n > 0}


def held_story(record: Mapping[str, object], scan: ScanRule, brute_force: int) -> str:
    """The story a forwarding sink's "held" record tells, or "" when none applies.

    A held record counts the events a sink's rate limit folded together, by client
    address and daemon. By the same numbers as the digest's stories (`[scan]`, `[story]
    brute_force`), when the held span fits the scan window: one address with `daemons`
    daemons is a scan; one address with `brute_force` events for one daemon is a brute
    force; `sources` addresses listed, all of one /24 or /64, are a sweep. Records of
    untrusted reports tell no story: their names are the sender's to choose."""
    if record.get("trusted") is False:
        return ""
    clients, daemons = _tally(record.get("clients")), _tally(record.get("daemons"))
    others = record.get("other_clients")
    first, last = record.get("first"), record.get("last")
    in_window = (
        isinstance(first, int | float) and isinstance(last, int | float)
    ) and last - first <= scan.window
    if len(clients) == 1 and not others:
        ((addr, n),) = clients.items()
        if in_window and len(daemons) >= scan.daemons:
            return f"scan from {addr} ({len(daemons)} daemons)"
        if len(daemons) == 1 and n >= brute_force:
            return f"brute force from {addr} on {next(iter(daemons))} ({n:,} tries)"
    nets = {network(addr) for addr in clients}
    if in_window and len(nets) == 1 and len(clients) >= scan.sources:
        (net,) = nets
        if net is not None:
            more = "+" if others else ""
            return f"sweep of {net} ({len(clients)}{more} addresses)"
    return ""
