"""alertmanager sink: records collapsed into alerts, POSTed to Alertmanager's API v2.

The fleet path: every host posts to the same Alertmanager cluster, which
groups, deduplicates, silences and routes. One `send_records` call is one
POST /api/v2/alerts to *every* URL (as Prometheus does: the cluster's
members do not forward alerts to each other). It succeeds when at least one
accepts; it is permanent only when every one refused for good (a 4xx), and
transient otherwise.

Each batch's event records collapse into one alert per label set:

    alertname  WrapalertRefused (verdict deny) or WrapalertAllowed (allow)
    daemon, client_addr, host (this host), trust (trusted|untrusted),
    transport (tcp|udp|unknown: what the kernel vouched for; a udp or unknown
    client_addr may be forged and never counts toward a ban)
    + the configured static `labels`

with annotations `summary`, `events` (in this batch), `events_total`
(since the alert started firing, as this process posted them), `first_seen`,
`last_seen` and, when known, `client_name`, `user` and `uid` (the most
frequent few values). Alertmanager keeps the first startsAt of an active
alert but replaces its annotations with the newest POST's, so `events`
counts the last batch and `events_total` the whole span. `endsAt` = last
seen + `resolve_after`: each new event pushes it on, and once events stop the
alert resolves by itself.

"scan" records (the daemon's scan detector, trusted reports only) become
`WrapalertScan` alerts labelled kind (daemons|sweep), host, and client_addr (a
source that tried several daemons) or network (a swept /24 or /64), with the
daemons and sources as annotations: an Alertmanager inhibit rule can then
mute that source's plain refusals (packaging/examples/alertmanager.yml).

With `heartbeat` (default 5 min) the daemon also keeps one `WrapalertHeartbeat`
alert firing, labelled host and the static labels, refreshed every interval with
endsAt three intervals ahead (`heartbeat_alert`; daemon/heartbeat.py posts it):
when the host goes silent it resolves, and a dead man's switch receiver pages
(packaging/examples/alertmanager.yml). The peers, their basic auth and the CA
that verifies https ones are sinks/amapi.py's.

"held" records (events the rate limit counted instead of forwarding) become
one alert `WrapalertHeld` with labels host and the static ones, and the
held count, time span and top daemons as annotations; untrusted held
records make a second one, labelled `trust="untrusted"`.

"hook" records (the daemon's alarm book, daemon/alarm.py) become
`WrapalertHookBroken`, labelled host: firing while refused connections cannot
reach the daemon (a broken hosts.deny line, a failed canary...), with the
problems as an annotation, and resolved when they are fixed.

Values are data: they go only into JSON strings built by `json.dumps`, label
names are ours or checked by the config, lone surrogates become U+FFFD and
each value is capped at `MAX_VALUE` characters (above any wire value), so no
record can break the JSON, add a label or rename one.
"""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from wrapalert.clock import SYSTEM
from wrapalert.confkeys import (
    POSITIVE,
    TIMEOUT,
    Duration,
    Pairs,
    PathValue,
    Text,
    Urls,
    setting,
    sink_name,
    sink_rate,
)
from wrapalert.confparse import HttpUrl, Table
from wrapalert.sinks.amapi import Access, Peers
from wrapalert.sinks.base import Capabilities, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import EventSinkType

log = structlog.get_logger()

MAX_VALUE = 8192  # characters per label or annotation value; a whole datagram is 4096 bytes
LISTED = 5  # distinct values named in an annotation; the rest are counted

_SURROGATE = re.compile("[\ud800-\udfff]")

Alert = dict[str, object]
LabelKey = tuple[tuple[str, str], ...]
MAX_TOTALS = 10_000  # label sets whose running total is kept
# Alertmanager's (Prometheus') label names; "__" starts the reserved ones.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The labels this sink sets itself: static labels may not replace them.
ALERT_LABELS = frozenset({"alertname", "daemon", "client_addr", "host", "trust"})
HEARTBEAT_AHEAD = 3  # intervals a heartbeat alert stays firing without a refresh
# RFC 7617: the user id may not hold a colon; control characters could split the header.
USERNAME = re.compile(r"[^:\x00-\x1f\x7f]{1,256}")


def _urls(urls: tuple[HttpUrl, ...]) -> tuple[HttpUrl, ...]:
    if not urls:
        raise ValueError("needs at least one Alertmanager URL")
    for url in urls:
        # The API path is appended to each URL: a query would end up in the middle.
        if "?" in url.text:
            raise ValueError(f"{url.text!r} must not have a ?query")
    if len({url.text for url in urls}) != len(urls):
        raise ValueError("lists a URL twice (each would get every alert twice)")
    return urls


def _labels(labels: tuple[tuple[str, object], ...]) -> tuple[tuple[str, str], ...]:
    checked = []
    for name, value in labels:
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if name in ALERT_LABELS:
            raise ValueError(f"{name!r} is set by wrapalert; use another name")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: expected a non-empty string")
        checked.append((name, value))
    return tuple(sorted(checked))


def _heartbeat(seconds: float) -> float:
    if 0 < seconds < 1:
        raise ValueError("use 0 (off) or at least 1s")
    return seconds


@dataclass(frozen=True)
class AlertmanagerSinkConfig:
    """A forwarding sink: alerts POSTed to every Alertmanager of a cluster (API v2)."""

    name: str = sink_name("alertmanager")
    urls: tuple[HttpUrl, ...] = setting(
        (HttpUrl.parse("http://127.0.0.1:9093"),),
        "Every Alertmanager of the cluster: each gets every alert.",
        Urls(),
        check=_urls,
    )
    timeout: float = setting(10.0, "How long one POST may take.", TIMEOUT)
    resolve_after: float = setting(
        900.0, "An alert stays firing this long after its last event.", POSITIVE
    )
    labels: tuple[tuple[str, str], ...] = setting(
        (), 'Static labels added to every alert, e.g. { env = "prod" }.', Pairs(), check=_labels
    )
    events_per_second: float | None = sink_rate()
    username: str | None = setting(
        None,
        "HTTP basic auth user name (with password_file), as Alertmanager's "
        "--web.config.file basic_auth_users checks it.",
        Text(USERNAME, "no colon and no control characters, at most 256"),
    )
    password_file: Path | None = setting(
        None,
        "File whose first line is the basic auth password, read at start and at each "
        "reload; refused if other users may read or write it (give it to owner and group "
        "wrapalert only, or use systemd's LoadCredential=).",
        PathValue(),
    )
    ca_file: Path | None = setting(
        None,
        "PEM file of the CA certificate(s) that verify https:// peers (as Alertmanager's "
        "tls_server_config serves them); unset: the system's CAs.",
        PathValue(),
    )
    heartbeat: float = setting(
        300.0,
        "An always-firing WrapalertHeartbeat alert, refreshed this often with its endsAt "
        'three intervals ahead, so Alertmanager can page when this host goes silent; "0" off.',
        Duration(),
        check=_heartbeat,
    )

    @property
    def access(self) -> Access:
        """The peers and how to reach them (sinks/amapi.py reads the files)."""
        return Access(self.urls, self.timeout, self.username, self.password_file, self.ca_file)


def check(t: Table, cfg: AlertmanagerSinkConfig) -> None:
    """Rules across the keys: basic auth needs both halves, a CA needs an https peer."""
    if cfg.username is not None and cfg.password_file is None:
        raise t.error("password_file", "missing: basic auth needs it beside username")
    if cfg.password_file is not None and cfg.username is None:
        raise t.error("username", "missing: basic auth needs it beside password_file")
    if cfg.ca_file is not None and not any(url.tls for url in cfg.urls):
        raise t.error("ca_file", "verifies https:// peers, and urls has none")


def describe(cfg: AlertmanagerSinkConfig) -> str:
    extras = []
    if cfg.username is not None:
        plain = [url.text for url in cfg.urls if not url.tls]
        clear = (
            f"; over http the password crosses the network readable: {plain[0]}" if plain else ""
        )
        extras.append(f"basic auth as {cfg.username!r} (password from {cfg.password_file}){clear}")
    if cfg.ca_file is not None:
        extras.append(f"https verified by {cfg.ca_file}")
    beat = f"heartbeat every {cfg.heartbeat:g}s" if cfg.heartbeat else "no heartbeat"
    extras.append(beat)
    return (
        f"alertmanager {', '.join(map(str, cfg.urls))} (forwarding, alerts per label set; "
        f"{'; '.join(extras)})"
    )


class Totals:
    """Events per label set since its alert started firing, for `events_total`.

    Bounded: past `limit` label sets the least recently posted is forgotten (its
    count starts again). A label set whose alert resolved meanwhile (no event for
    resolve_after) starts again too. `stage` counts a batch; `commit` keeps it once
    a peer took the POST, so a batch that is retried is not counted twice.
    """

    def __init__(self, limit: int = MAX_TOTALS) -> None:
        self.limit = limit
        self.known: dict[LabelKey, tuple[int, float]] = {}  # total, when it resolves
        self.staged: dict[LabelKey, tuple[int, float]] = {}

    def stage(self, key: LabelKey, events: int, first: float, resolves: float) -> int:
        total, until = self.staged.get(key) or self.known.get(key, (0, float("-inf")))
        if first > until:
            total = 0  # resolved in between: a new alert in Alertmanager's eyes
        self.staged[key] = (total + events, resolves)
        return total + events

    def commit(self) -> None:
        for key, value in self.staged.items():
            self.known.pop(key, None)
            self.known[key] = value  # re-inserted: the dict's order is least recent first
        self.staged.clear()
        while len(self.known) > self.limit:
            del self.known[next(iter(self.known))]


class AlertmanagerSink:
    """POSTs each batch of records, collapsed into alerts, to every URL at once."""

    def __init__(
        self,
        cfg: AlertmanagerSinkConfig,
        *,
        host: str | None = None,
        now: Callable[[], float] = SYSTEM.now,
    ) -> None:
        self.name = cfg.name
        self.peers = Peers.connect(cfg.access)  # ConfigError: the password or CA file
        self.resolve_after = cfg.resolve_after
        self.labels = dict(cfg.labels)
        self.host = host or socket.gethostname()
        self.now = now
        self.totals = Totals()

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.totals.staged.clear()  # what a failed attempt counted
        alerts = build_alerts(
            records,
            host=self.host,
            static=self.labels,
            resolve_after=self.resolve_after,
            now=self.now(),
            totals=self.totals,
        )
        if not alerts:
            return
        body = json.dumps(alerts, separators=(",", ":")).encode()
        outcomes = await self.peers.post(body)
        errors = [error for error in outcomes if error is not None]
        if len(errors) < len(outcomes):
            for error in errors:  # delivered all the same: the cluster shares it
                log.warning("alertmanager_peer_failed", sink=self.name, error=str(error))
            self.totals.commit()
            return
        message = "; ".join(str(error) for error in errors)
        if all(isinstance(error, PermanentSinkError) for error in errors):
            raise PermanentSinkError(message)
        raise TransientSinkError(message)  # a peer may come back and take it


def heartbeat_alert(
    *, host: str, static: dict[str, str], started: float, now: float, interval: float
) -> Alert:
    """The WrapalertHeartbeat alert: firing since the daemon started, for HEARTBEAT_AHEAD
    intervals from `now` (each refresh pushes its end on)."""
    until = now + HEARTBEAT_AHEAD * interval
    summary = (
        f"wrapalert on {host} is running; refreshed every {interval:g}s, so this alert "
        f"resolves by itself {HEARTBEAT_AHEAD * interval:g}s after the host goes silent"
    )
    return {
        "labels": {**static, "alertname": "WrapalertHeartbeat", "host": host},
        "annotations": {"summary": _value(summary), "refreshed": _rfc3339(now)},
        "startsAt": _rfc3339(started),
        "endsAt": _rfc3339(until),
    }


@dataclass
class _Group:
    """What one alert collects from the records that share its labels."""

    events: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    names: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    uids: Counter[str] = field(default_factory=Counter)
    daemons: Counter[str] = field(default_factory=Counter)
    sources: int = 0  # a sweep's addresses
    stories: Counter[str] = field(default_factory=Counter)  # of held records: see story.py

    def seen(self, first: float, last: float, events: int = 1) -> None:
        self.events += events
        self.first = min(self.first, first)
        self.last = max(self.last, last)


def build_alerts(
    records: Iterable[dict[str, object]],
    *,
    host: str,
    static: dict[str, str],
    resolve_after: float,
    now: float,
    totals: Totals | None = None,
) -> list[Alert]:
    """The alerts for one batch: one per label set, in first-seen order; with `totals`,
    each but a scan says its running total (staged there)."""
    groups: dict[tuple[tuple[str, str], ...], _Group] = {}
    hooks: list[Alert] = []
    for record in records:
        kind = record.get("type")
        if kind == "event":
            labels = _event_labels(record, host)
            at = _time(record.get("received"), now)
            group = groups.setdefault(labels, _Group())
            group.seen(at, at)
            _count(group.names, record.get("client_name"))
            _count(group.users, record.get("user"))
            _count(group.uids, record.get("uid"))
        elif kind == "scan" and (scan := _scan_labels(record, host)) is not None:
            _add_scan(groups.setdefault(scan, _Group()), record, now)
        elif kind == "held":
            _add_held(groups, record, host, now)
        elif kind == "hook":
            hooks.append(hook_alert(record, host, static, resolve_after, now))
        # Another type is a newer record this sink does not know: nothing to alert on.
    alerts = []
    for labels, group in groups.items():
        alert = _alert(dict(labels), group, static, resolve_after)
        annotations = alert["annotations"]
        if totals is not None and isinstance(annotations, dict) and "events" in annotations:
            until = group.last + resolve_after
            annotations["events_total"] = str(
                totals.stage(labels, group.events, group.first, until)
            )
        alerts.append(alert)
    return alerts + hooks


def hook_alert(
    record: dict[str, object], host: str, static: dict[str, str], resolve_after: float, now: float
) -> Alert:
    """`WrapalertHookBroken` from the daemon's "hook" record (daemon/alarm.py): firing while
    refused connections cannot reach the daemon (posted again every `refresh` seconds, so
    it lives three of them), resolved (endsAt: now) once every problem is fixed."""
    since = _time(record.get("since"), now)
    refresh = record.get("refresh")
    refresh = refresh if isinstance(refresh, int | float) and refresh > 0 else 60.0
    problems = record.get("problems")
    listed = (
        [_value(p) for p in problems if isinstance(p, str)] if isinstance(problems, list) else []
    )
    more = record.get("more")
    if isinstance(more, int) and more > 0:
        listed.append(f"and {more} more")
    ok = record.get("ok") is True
    summary = (
        f"the alarm works again on {host}: refused connections reach wrapalert"
        if ok
        else f"the alarm is off on {host}: refused connections no longer reach wrapalert"
        + (f" ({listed[0]})" if listed else "")
    )
    return {
        "labels": {**static, "alertname": "WrapalertHookBroken", "host": host},
        "annotations": {"summary": _value(summary), "problems": _value("; ".join(listed))},
        "startsAt": _rfc3339(since),
        "endsAt": _rfc3339(now if ok else now + max(resolve_after, 3 * float(refresh))),
    }


def _add_held(
    groups: dict[tuple[tuple[str, str], ...], _Group],
    record: dict[str, object],
    host: str,
    now: float,
) -> None:
    """One held alert per trust class: a local user's flood never sums into ours. (The
    trusted one keeps its labels, so its alert stays the same alert.)"""
    trust = "untrusted" if record.get("trusted") is False else "trusted"
    key: tuple[tuple[str, str], ...] = (("alertname", "WrapalertHeld"), ("host", host))
    if trust == "untrusted":
        key += (("trust", trust),)
    group = groups.setdefault(key, _Group())
    events = record.get("events")
    group.seen(
        _time(record.get("first"), now),
        _time(record.get("last"), now),
        events if isinstance(events, int) and events > 0 else 1,
    )
    daemons = record.get("daemons" if trust == "trusted" else "untrusted_daemons")
    for daemon, n in daemons.items() if isinstance(daemons, dict) else ():
        if isinstance(n, int) and n > 0:
            group.daemons[_value(daemon)] += n
    other = record.get("other_daemons")
    if isinstance(other, int) and other > 0:
        group.daemons["other"] += other
    if trust == "trusted":  # an untrusted held record has no story: its text is a user's
        _count(group.stories, record.get("story"))


def _event_labels(record: dict[str, object], host: str) -> tuple[tuple[str, str], ...]:
    verdict = record.get("verdict")
    trust = "untrusted" if record.get("trusted") is False else "trusted"
    labels = [
        ("alertname", "WrapalertAllowed" if verdict == "allow" else "WrapalertRefused"),
        ("daemon", _value(record.get("daemon"))),
        ("client_addr", _value(record.get("client_addr"))),
        ("host", host),
        ("trust", trust),
        # The daemon's finding (daemon/witness.py): "udp" and "unknown" sources may be forged.
        ("transport", _value(record.get("transport"))),
    ]
    return tuple((name, value) for name, value in labels if value)  # empty means absent


def _add_scan(group: _Group, record: dict[str, object], now: float) -> None:
    group.seen(_time(record.get("first"), now), _time(record.get("last"), now), 0)
    daemons = record.get("daemons")
    for daemon in daemons if isinstance(daemons, list) else ():
        group.daemons[_value(daemon)] = 1
    sources = record.get("sources")
    if isinstance(sources, int) and sources > 0:
        group.sources = max(group.sources, sources)


def _scan_labels(record: dict[str, object], host: str) -> tuple[tuple[str, str], ...] | None:
    kind, target = record.get("kind"), _value(record.get("target"))
    if kind not in ("daemons", "sweep") or not target:
        return None  # a damaged or newer record: nothing to alert on
    where = "client_addr" if kind == "daemons" else "network"
    return (("alertname", "WrapalertScan"), ("kind", kind), (where, target), ("host", host))


def _alert(
    labels: dict[str, str], group: _Group, static: dict[str, str], resolve_after: float
) -> Alert:
    scan = labels["alertname"] == "WrapalertScan"
    annotations = {
        "summary": _summary(labels, group),
        "events": str(group.events),
        "first_seen": _rfc3339(group.first),
        "last_seen": _rfc3339(group.last),
    }
    if scan:  # its events are counted by the refusal alerts; a scan counts sources
        del annotations["events"]
        annotations["sources"] = str(group.sources)
    for name, counts in (
        ("client_name", group.names),
        ("user", group.users),
        ("uid", group.uids),
        ("daemons", group.daemons),
        ("story", group.stories),
    ):
        if counts:
            annotations[name] = _listing(counts, with_counts=name == "daemons" and not scan)
    return {
        # Ours after the static ones: the config refuses clashes, and ours would win anyway.
        "labels": {**static, **labels},
        "annotations": {k: _value(v) for k, v in annotations.items()},
        "startsAt": _rfc3339(group.first),
        "endsAt": _rfc3339(group.last + resolve_after),
    }


def _summary(labels: dict[str, str], group: _Group) -> str:
    host = labels.get("host", "")
    if labels["alertname"] == "WrapalertScan":
        if labels["kind"] == "daemons":
            tried = len(group.daemons)
            what = f"{labels['client_addr']} tried {tried} daemon{'s' if tried != 1 else ''}"
            what += f" ({_listing(group.daemons)})"
        else:
            what = f"{group.sources} addresses in {labels['network']} were refused"
        return f"scan on {host}: {what}"
    if labels["alertname"] == "WrapalertHeld":
        story = f" ({_listing(group.stories)})" if group.stories else ""
        text = (
            f"{group.events} event{'s' if group.events != 1 else ''} held back by the rate "
            f"limit on {host}{story}: "
            "counted, not forwarded one by one"
        )
        return f"UNTRUSTED reports: {text}" if labels.get("trust") == "untrusted" else text
    verb = "allowed" if labels["alertname"] == "WrapalertAllowed" else "refused"
    names = f" ({_listing(group.names)})" if group.names else ""
    text = (
        f"{group.events} {verb} connection{'s' if group.events != 1 else ''} to "
        f"{labels.get('daemon', 'unknown')} from {labels.get('client_addr', 'unknown')}"
        f"{names} on {host}"
    )
    if labels.get("trust") == "untrusted":
        text = f"UNTRUSTED report (uid {_listing(group.uids)}): {text}"
    elif labels.get("transport") in ("udp", "unknown"):
        text += f" (source address not verified: {labels['transport']})"
    return text


def _count(counter: Counter[str], value: object) -> None:
    if value is not None and (text := _value(value)):
        counter[text] += 1


def _listing(counts: Counter[str], *, with_counts: bool = False) -> str:
    """The most frequent few values, comma-separated, and how many others there were."""
    top = counts.most_common(LISTED)
    words = [f"{value}: {n}" if with_counts else value for value, n in top]
    if len(counts) > LISTED:
        words.append(f"and {len(counts) - LISTED} more")
    return ", ".join(words)


def _value(value: object) -> str:
    """A label or annotation value: valid UTF-8 (lone surrogates replaced), bounded."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if not text.isascii():  # a lone surrogate cannot be UTF-8: it becomes U+FFFD
        text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _time(value: object, now: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return now


def _rfc3339(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Alertmanager writes it."""
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


SINK = EventSinkType(
    name="alertmanager",
    config=AlertmanagerSinkConfig,
    describe=describe,
    build=AlertmanagerSink,
    build_for_host=lambda cfg, host: AlertmanagerSink(cfg, host=host),
    check=check,
    # A scan is an alert of its own; so is the alarm's own state (WrapalertHookBroken).
    takes=Capabilities(records=True, scans=True, notices=True),
)
