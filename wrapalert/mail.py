"""Digest mail: jinja2 templates in, a standards-conforming EmailMessage out.

Templates run in jinja2's sandbox; the HTML part is autoescaped. Event
values reach headers only through `header_text`, which removes control
characters (no CR/LF header injection) and bounds the length.

User templates (`[digest] template_dir`) override the built-in ones file by
file and may include ours as `builtin/NAME`. One that fails to load or
render (syntax error, runtime error, undefined variable) is logged and the
built-in one is used instead: a template never costs a mail.

The template context is documented in `context` below.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from html import escape
from pathlib import Path
from typing import Any

import jinja2
import structlog
from jinja2.sandbox import SandboxedEnvironment

from wrapalert.model import TIMELINE_BUCKET, Digest, GroupReport
from wrapalert.pipeline.aggregate import OVERFLOW

log = structlog.get_logger()

SUBJECT_MAX = 120
MAX_LINE = 998  # RFC 5322 2.1.1: bytes per line, CRLF excluded
TOP_SOURCES = 30  # rows in the sources table; the rest are summed in one line
LIST_MAX = 20  # scans, roll-ups and untrusted reports listed; the rest are summed
THREAD_REFS = 10  # group thread ids in References: the largest groups of the digest
PERSISTENT_AFTER = 3600.0  # a group older than this before the window is "persistent"
SWEEP_ADDRS = 4  # this many addresses in one /24 or /64 make a sweep
TIMELINE_SLOTS = 20  # bars in the chart at most; buckets are merged to fit
SILENCE_FOR = "2h"
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)  # minutes per bar
_PACKAGE_TEMPLATES = Path(__file__).with_name("templates")
_SOURCE_TEMPLATES = Path(__file__).parent.parent / "templates"
_CONTROL = dict.fromkeys((*range(32), *range(127, 160)), " ")
_MASK24, _MASK64 = (1 << 32) - (1 << 8), (1 << 128) - (1 << 64)
_COLUMNS = frozenset({"daemon", "client_addr"})  # labels the sources table shows as columns
_NOT_DOMAIN = re.compile(r"[^A-Za-z0-9.-]+")


class _MessageIds(UnstructuredHeader, BaseHeader):
    """References/In-Reply-To: one msg-id per line, never RFC 2047-encoded.

    The stock unstructured header encodes a long msg-id as encoded words,
    which no mail reader matches, and the thread breaks.
    """

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f"{policy.linesep} ".join(str(self).split()) + policy.linesep


_headers = HeaderRegistry()
_headers.map_to_type("references", _MessageIds)
_headers.map_to_type("in-reply-to", _MessageIds)
POLICY = EmailPolicy(header_factory=_headers)


def template_dirs(extra: Path | None = None) -> list[str]:
    """User templates first (when given), then the installed package's, then the source tree's."""
    dirs = [extra] if extra else []
    dirs += [_PACKAGE_TEMPLATES, _SOURCE_TEMPLATES]
    return [str(d) for d in dirs if d.is_dir()]


def header_text(value: str, limit: int = SUBJECT_MAX) -> str:
    """One safe header line: control characters become spaces, runs collapse, length bounded."""
    text = " ".join(value.translate(_CONTROL).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def msgid_domain(host: str) -> str:
    """An ASCII domain for msg-ids: IDNA (or punycode) for non-ASCII, odd bytes as `-`."""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:  # not a valid IDN (label too long, ...): punycode is always ASCII
            host = host.encode("punycode").decode("ascii")
    return _NOT_DOMAIN.sub("-", host).strip(".-")[:200] or "localhost"


def thread_id(key: tuple[str, ...], domain: str) -> str:
    """The stable msg-id every digest about this group refers to, so they thread together."""
    digest = hashlib.sha256("\x00".join(key).encode("utf-8", "surrogatepass")).hexdigest()
    return f"<wrapalert-group-{digest[:16]}@{domain}>"


def transfer_encoding(text: str) -> str:
    """7bit when every line is ASCII and short enough for SMTP; else quoted-printable."""
    if text.isascii() and all(len(line) <= MAX_LINE for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def qualify(address: str, host: str) -> str:
    """`root` becomes `root@host`: a bare local part is refused over SMTP."""
    return address if "@" in address else f"{address}@{host}"


# -- filters ---------------------------------------------------------------------------


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


def _clean(value: object) -> object:
    """Jinja's finalize: no control character (terminal escapes, newlines) from any value."""
    return value.translate(_CONTROL) if type(value) is str else value


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
    """One address trying several daemons (addrs == 1), or a sweep of one /24 or /64."""

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


def _network(addr: str) -> str | None:
    """The /24 or /64 around `addr`, or None for "unknown" and the like."""
    try:
        ip = ipaddress.ip_address(addr.partition("%")[0])  # a zone id is no part of the net
    except ValueError:
        return None
    # Masking the integer is several times cheaper than ip_network (hot with 10,000 groups).
    if ip.version == 4:
        return f"{ipaddress.IPv4Address(int(ip) & _MASK24)}/24"
    return f"{ipaddress.IPv6Address(int(ip) & _MASK64)}/64"


def scans(groups: list[GroupReport]) -> list[Scan]:
    """Multi-daemon probes (daemons known only for single-address groups) and prefix sweeps."""
    per_addr: dict[str, Counter[str]] = defaultdict(Counter)
    per_net: dict[str, Counter[str]] = defaultdict(Counter)
    net_daemons: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        if len(g.addrs) == 1 and not g.more_addrs:
            per_addr[g.addrs[0][0]].update(dict(g.daemons))
        for addr, n in g.addrs:
            if (net := _network(addr)) is not None:
                per_net[net][addr] += n
                net_daemons[net].update(d for d, _ in g.daemons)
    out = [
        Scan(addr, 1, c.total(), tuple(sorted(c)), silence_command((), addr))
        for addr, c in per_addr.items()
        if len(c) >= 2 and addr != "unknown"
    ]
    for net, c in per_net.items():
        if len(c) >= SWEEP_ADDRS:
            daemons = tuple(sorted(net_daemons[net]))
            out.append(Scan(net, len(c), c.total(), daemons, silence_command(daemons, net)))
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
    }


# -- rendering -----------------------------------------------------------------------------


def _environment(loader: jinja2.BaseLoader, *, html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=loader,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=not html,
        finalize=_clean,
    )
    env.filters.update(
        when=local_time,
        hms=short_time,
        thousands="{:,}".format,
        known=known,
        cell=cell,
        fit=fit,
        tally=tally,
        duration=duration,
    )
    return env


class _Templates:
    """The text and the HTML environment over one loader."""

    def __init__(self, loader: jinja2.BaseLoader) -> None:
        self.text = _environment(loader, html=False)
        self.html = _environment(loader, html=True)

    def render(self, name: str, ctx: dict[str, Any]) -> str:
        env = self.html if name.endswith(".html.j2") else self.text
        return env.get_template(name).render(ctx)


def _bare(name: str, ctx: dict[str, Any]) -> str:
    """The last resort when even our template fails: the counts, in one line."""
    line = (
        f"wrapalert on {header_text(ctx['host'], 200)}: {ctx['events']:,} refused from "
        f"{ctx['sources']:,} sources (the digest template failed: see wrapalert's log)"
    )
    if name == "subject.j2":
        return f"[wrapalert] {line}"
    return f"<p>{escape(line)}</p>" if name.endswith(".html.j2") else line + "\n"


class Renderer:
    """Turns a Digest into an EmailMessage; one per sink (sender and recipients differ)."""

    def __init__(
        self, from_addr: str, to: tuple[str, ...], template_dir: Path | None = None
    ) -> None:
        self.host = socket.gethostname()
        self.from_addr = qualify(from_addr, self.host)
        self.to = tuple(qualify(a, self.host) for a in to)
        builtin = jinja2.FileSystemLoader(template_dirs())
        self.builtin = _Templates(builtin)
        self.template_dir = template_dir
        self.user: _Templates | None = None
        if template_dir is not None:
            if not template_dir.is_dir():
                log.error("template_dir_missing", template_dir=str(template_dir))
            user = jinja2.FileSystemLoader(str(template_dir))
            self.user = _Templates(
                jinja2.ChoiceLoader([user, jinja2.PrefixLoader({"builtin": builtin})])
            )

    def part(self, name: str, ctx: dict[str, Any]) -> str:
        """`name` rendered from the user's template if it works, else from ours."""
        if self.user is not None:
            try:
                return self.user.render(name, ctx)
            except jinja2.TemplateNotFound as exc:
                if exc.name != name:  # an include inside the user's template is missing
                    self._failed(name, exc, self.template_dir)
            except Exception as exc:  # noqa: BLE001 - a user template may raise anything: ours is the fallback
                self._failed(name, exc, self.template_dir)
        try:
            return self.builtin.render(name, ctx)
        except Exception as exc:  # noqa: BLE001 - e.g. templates not installed: a bare mail beats none
            self._failed(name, exc, None)
            return _bare(name, ctx)

    @staticmethod
    def _failed(name: str, exc: Exception, template_dir: Path | None) -> None:
        log.error(
            "template_failed",
            template=name,
            template_dir=str(template_dir) if template_dir else "built-in",
            error=f"{type(exc).__name__}: {exc}"[:300],
        )

    def render(self, digest: Digest) -> EmailMessage:
        ctx = context(digest)
        subject = header_text(self.part("subject.j2", ctx))
        text = self.part("mail.txt.j2", ctx)
        html = self.part("mail.html.j2", ctx)
        domain = msgid_domain(digest.host)

        msg = EmailMessage(policy=POLICY)
        msg["Subject"] = subject
        msg["From"] = Address(addr_spec=self.from_addr)
        msg["To"] = [Address(addr_spec=a) for a in self.to]
        msg["Date"] = datetime.fromtimestamp(digest.created, UTC)
        msg["Message-ID"] = f"<{digest.id}@{domain}>"
        groups = ctx["groups"]  # busiest first: they lead the bounded list
        threads = list(dict.fromkeys(thread_id(g.key, domain) for g in groups))[:THREAD_REFS]
        if threads:
            msg["In-Reply-To"] = threads[0]
            msg["References"] = " ".join(threads)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
        msg["X-Wrapalert-Events"] = str(digest.events)
        msg["X-Wrapalert-Sources"] = str(digest.sources)
        msg["X-Wrapalert-Held"] = str(digest.held)
        msg["X-Wrapalert-Host"] = header_text(digest.host, 200)
        # For filters: the highest route severity, and how many scans the digest found.
        msg["X-Wrapalert-Severity"] = digest.severity
        msg["X-Wrapalert-Scans"] = str(len(ctx["scans"]) + ctx["more_scans"])
        msg.set_content(text, charset="utf-8", cte=transfer_encoding(text))
        msg.add_alternative(html, subtype="html", charset="utf-8", cte=transfer_encoding(html))
        return msg
