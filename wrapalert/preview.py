"""`wrapalert preview`: the digest for sample or given events, rendered, never sent; or a
sample notice (`--notice alarm-off|alarm-on|quiet`: what the hook watch, the canary and
the quiet watch send).

An events file holds one refused connection per line, written like the
client's arguments (`d=sshd a=192.0.2.1 n=host.example`; long names such as
`daemon=sshd` work too). Blank lines and `#` comments are skipped; values may
be shell-quoted. Five more keys shape the preview: `ago=5m` (when, before
now; default now), `uid=N` (the sender: trusted when in `trusted_uids`;
default the first of them), `count=N` (the line stands for N events),
`before=3h` (its group was reported before, first seen that long ago) and
`transport=udp` (what the kernel vouched for, daemon/witness.py: `tcp`, the
default, as for a refused TCP connection; `udp` or `unknown` show the
digest's "not verified" marker).
Every line is checked by the daemon's own parser (wire.parse), and the
digest comes from the daemon's own Aggregator: what the preview shows is
what the daemon would send.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

from wrapalert import config, wire
from wrapalert.confparse import parse_duration
from wrapalert.mail import Renderer
from wrapalert.model import Digest, Event
from wrapalert.notice import Kind, Notice, Problem, Quiet
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.chain import AggregateStage
from wrapalert.pipeline.scan import ScanDetector, ScanStage
from wrapalert.pipeline.stage import Chain, Flow, Stage
from wrapalert.sinks import registry

MAX_COUNT = 100_000  # per line: a preview is not a load test
PREVIEW_KEYS = frozenset({"ago", "uid", "count", "before", "transport"})
TRANSPORTS = ("tcp", "udp", "unknown")
_SHORT = {long: short for short, long in wire.FIELDS.items()}

# Every story kind (wrapalert/story.py): what the daemon's detector calls a scan with the
# default `[scan]` (3 daemons or 16 addresses of one /24 within 10 minutes), a brute force
# by the default `[story]` (20 refusals by one daemon), a repeat offender, probes and an
# untrusted report; sample_digest adds held and silenced counts.
SAMPLE = (
    """\
# A brute force: one address, many refusals by sshd.
d=sshd a=192.0.2.200 n=guess.example.com ago=12m count=180
# One scanner trying four services over half an hour, three of them within 10 minutes.
d=sshd a=203.0.113.7 n=scanner.example.net ago=31m count=40
d=sshd a=203.0.113.7 n=scanner.example.net ago=24m count=55
d=in.ftpd a=203.0.113.7 n=scanner.example.net ago=16m count=12
d=vsftpd a=203.0.113.7 n=scanner.example.net ago=9m count=7
d=in.telnetd a=203.0.113.7 n=scanner.example.net ago=7m count=3
d=sshd a=203.0.113.7 n=scanner.example.net ago=2m count=17
# A sweep through one /24: 16 addresses in 8 minutes.
"""
    + "".join(f"d=sshd a=198.51.100.{10 + i} ago={15 - i // 2}m\n" for i in range(16))
    + """\
# Reported before, first seen three hours ago, and back.
d=in.ftpd a=198.18.7.42 ago=3m count=4 before=3h
# Two more sources, one of them over IPv6, one with a mismatching reverse name.
d=in.ftpd a=2001:db8::66 n=paranoid ago=6m count=9
d=sshd a=192.0.2.33 n=mail.example.org ago=1m count=2
# Refused by a UDP service (tftp through tcpd): its address is the datagram's word.
d=in.tftpd a=203.0.113.66 ago=5m transport=udp
# Sent by a local user, not a root service: reported apart, marked untrusted.
d=sshd a=192.0.2.99 uid=1000 ago=4m
"""
)


class EventsError(ValueError):
    """An events file has bad lines; `problems` are "NAME:LINE: reason" strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Planned:
    """One line of an events file: the event's fields and when, who, how many."""

    fields: dict[str, str]
    ago: float
    uid: int | None
    count: int
    before: float | None = None  # reported before, first seen this many seconds ago
    transport: str = "tcp"  # what the kernel vouched for (Event.transport)


def parse_line(line: str) -> Planned:
    """One non-blank line; ValueError names the problem (never with more than the key)."""
    short: dict[str, str] = {}
    extra: dict[str, str] = {}
    for token in shlex.split(line):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {token[:40]!r}")
        key = _SHORT.get(key, key)
        if key in short or key in extra:
            raise ValueError(f"duplicate key {key!r}")
        if key in PREVIEW_KEYS:
            extra[key] = value
        elif key in wire.FIELDS:
            short[key] = value
        else:
            raise ValueError(f"unknown key {key[:40]!r}")
    try:
        fields = wire.parse(wire.encode(short))
    except wire.WireError as exc:
        raise ValueError(exc.reason) from None
    ago = parse_duration(extra.get("ago", 0))
    uid = int(extra["uid"]) if "uid" in extra else None
    count = int(extra.get("count", "1"))
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1 to {MAX_COUNT}")
    before = parse_duration(extra["before"]) if "before" in extra else None
    transport = extra.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    return Planned(fields, ago, uid, count, before, transport)


def parse_events(text: str, name: str = "events") -> list[Planned]:
    """Every event line of `text`; all bad lines are reported together."""
    planned: list[Planned] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            planned.append(parse_line(line))
        except ValueError as exc:  # also shlex's "No closing quotation" and int()'s errors
            problems.append(f"{name}:{number}: {exc}")
    if problems:
        raise EventsError(problems)
    return planned


def build_digest(
    planned: list[Planned], cfg: config.Config, now: float, host: str | None = None
) -> Digest:
    """Feed the events to the daemon's own aggregate and scan stages in time order and
    take everything as one digest."""
    agg = Aggregator(cfg.digest, cfg.limits.max_groups)
    stages: list[Stage] = [AggregateStage(agg, on_due=_unheard)]
    if cfg.scan.enabled:
        detector = ScanDetector.for_rule(cfg.scan.rule)
        stages.append(ScanStage(detector, agg, severity=cfg.scan.severity, on_found=_unheard))
    feed = Chain(stages)
    trusted_uids = cfg.daemon.trusted_uids
    default_uid = trusted_uids[0] if trusted_uids else None
    for p in sorted(planned, key=lambda p: -p.ago):
        uid = default_uid if p.uid is None else p.uid
        at = now - p.ago
        trusted = uid in trusted_uids
        event = Event(dict(p.fields), at, uid=uid, trusted=trusted, transport=p.transport)
        for _ in range(p.count):
            feed(Flow(event))
    # force=True takes every group at once, labelled "shutdown flush"; a group of a
    # preview was not reported before unless a line says `before`, so "new group" is
    # what the daemon's timer would say, else "new activity" since that first sight.
    before = {_pair(p.fields): p.before for p in planned if p.before is not None}
    reports = []
    for r in agg.collect(now, force=True):
        seen = before.get(_pair(dict(r.labels)))
        if seen is None:
            reports.append(replace(r, reason="new group"))
        else:
            first = min(r.group_first_seen, now - seen)
            reports.append(
                replace(r, reason="new activity", group_first_seen=first, total=r.total + 1)
            )
    return Digest(host=host or cfg.daemon.hostname, created=now, groups=tuple(reports))


def _unheard(*_: object) -> None:
    """What the daemon would be told (a group due, a scan found): a preview needs none."""


def _pair(fields: dict[str, str]) -> tuple[str, str]:
    return (fields.get("daemon", ""), fields.get("client_addr", ""))


def sample_digest(cfg: config.Config, now: float | None = None) -> Digest:
    """The sample's digest, with some events held back by the mail rate limit and some
    silenced, as after a busy hour: every story kind appears."""
    digest = build_digest(parse_events(SAMPLE, "sample"), cfg, time.time() if now is None else now)
    return replace(digest, held=40, silenced=12, merged=2, id="")


def renderer_for(cfg: config.Config) -> Renderer:
    """The first mail sink's renderer (its sender and recipients), or a default one."""
    for sink in cfg.sinks:
        mail = registry.of(sink).mail
        if mail is not None:
            return Renderer(*mail(sink), cfg.digest.template_dir, cfg.story.rule)
    return Renderer("wrapalert@localhost", ("root",), cfg.digest.template_dir, cfg.story.rule)


def show(msg: EmailMessage, fmt: str) -> bytes:
    """What `preview --format` prints: "text" (subject and text part), "html" or "eml"."""
    if fmt == "eml":
        return bytes(msg)
    part = msg.get_body(("html",) if fmt == "html" else ("plain",))
    content = part.get_content() if part is not None else ""
    if fmt == "text":
        content = f"Subject: {msg['Subject']}\n\n{content}"
    return content.encode("utf-8")


def sample_notice(cfg: config.Config, kind: Kind, now: float | None = None) -> Notice:
    """A notice of each kind as the daemon would send it: the hook line dropped its final
    newline (alarm-off, with an older problem still open), both fixed (alarm-on), sshd
    silent for two days after 310 refusals a day (quiet)."""
    now = time.time() if now is None else now
    cmd = "wrapalert hosts-deny-line"
    deny, allow = str(cfg.hook.hosts_deny), str(cfg.hook.hosts_allow)
    unterminated = Problem(
        key=f"hook_line:{deny}:unterminated",
        kind="hook_line",
        path=deny,
        line=21,
        message="the file ends without a newline; libwrap stops reading hosts.deny here and "
        "denies EVERY client that reaches it",
        fix="end the file with a newline (echo >> FILE)",
        since=now - 3 * 3600,
    )
    shadowed = Problem(
        key=f"shadowed:{allow}:sshd : ALL",
        kind="shadowed",
        path=allow,
        line=12,
        message="'sshd : ALL' allows sshd connections from clients such as 192.0.2.254 "
        f"before {deny} line 21 is read: libwrap never runs the hook for them",
        fix="narrow that rule to the clients that must always get in (your admin networks, "
        f"e.g. 'sshd : 192.0.2.0/255.255.255.0'), or remove it (then: {cmd} shows the line)",
        since=now - 26 * 3600,
    )
    host = cfg.daemon.hostname
    if kind == "alarm-off":
        return Notice("alarm-off", host, now, (unterminated,), (shadowed,))
    if kind == "alarm-on":
        return Notice("alarm-on", host, now, (shadowed, unterminated))
    return Notice("quiet", host, now, quiet=Quiet("sshd", now - 48 * 3600, 310.4))


def preview_notice(cfg: config.Config, kind: Kind, fmt: str) -> bytes:
    """The rendered sample notice of `kind` (see `sample_notice`)."""
    return show(renderer_for(cfg).render_notice(sample_notice(cfg, kind)), fmt)


def preview(cfg: config.Config, events: Path | None, fmt: str) -> bytes:
    """The rendered digest for the sample, or for the events in `events`."""
    if events is None:
        digest = sample_digest(cfg)
    else:
        try:
            text = events.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EventsError([f"{events}: cannot read: {exc}"]) from None
        planned = parse_events(text, str(events))
        if not planned:
            raise EventsError([f"{events}: no events (one per line, e.g. d=sshd a=192.0.2.1)"])
        digest = build_digest(planned, cfg, time.time())
    return show(renderer_for(cfg).render(digest), fmt)
