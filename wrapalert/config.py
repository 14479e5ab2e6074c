"""Configuration: TOML in, frozen dataclasses out, validated once at the edge.

A missing file means built-in defaults. A bad file raises `ConfigError` whose
message names the file, the line and the key, e.g.
``/etc/wrapalert/wrapalert.toml:12: [digest] group_wait: bad duration "ten"``.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from socket import gethostname  # not `import socket`: DaemonConfig has a field of that name
from typing import TYPE_CHECKING, Any, TypeVar

from wrapalert.confparse import MAX_SOCKET_PATH as MAX_SOCKET_PATH
from wrapalert.confparse import ConfigError as ConfigError
from wrapalert.confparse import Key, KeyDocs
from wrapalert.confparse import SinkConfig as SinkConfig
from wrapalert.confparse import Table as _Table
from wrapalert.confparse import parse_duration as parse_duration

if TYPE_CHECKING:  # the sink config classes, still importable from here (see __getattr__)
    from wrapalert.sinks.alertmanager import AlertmanagerSinkConfig as AlertmanagerSinkConfig
    from wrapalert.sinks.journald import JournaldSinkConfig as JournaldSinkConfig
    from wrapalert.sinks.jsonl import JsonlSinkConfig as JsonlSinkConfig
    from wrapalert.sinks.maildir import MaildirSinkConfig as MaildirSinkConfig
    from wrapalert.sinks.sendmail import SendmailSinkConfig as SendmailSinkConfig
    from wrapalert.sinks.smtp import SmtpSinkConfig as SmtpSinkConfig
    from wrapalert.sinks.syslog import SyslogSinkConfig as SyslogSinkConfig
    from wrapalert.sinks.webhook import WebhookSinkConfig as WebhookSinkConfig

from wrapalert.match import (
    DEFAULT_SEVERITY,
    FIELDS,
    SEVERITIES,
    MatcherError,
    Selector,
    parse_network,
)
from wrapalert.scanrule import ScanRule
from wrapalert.story import StoryRule

DEFAULT_PATH = Path("/etc/wrapalert/wrapalert.toml")
HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_T = TypeVar("_T")
# Each sink's config class lives in its module (wrapalert/sinks/NAME.py); these names
# stay importable from here, loaded on first use: importing config imports no sink.
_SINK_CONFIGS = {
    "AlertmanagerSinkConfig": "alertmanager",
    "JournaldSinkConfig": "journald",
    "JsonlSinkConfig": "jsonl",
    "MaildirSinkConfig": "maildir",
    "SendmailSinkConfig": "sendmail",
    "SmtpSinkConfig": "smtp",
    "SyslogSinkConfig": "syslog",
    "WebhookSinkConfig": "webhook",
}


def __getattr__(name: str) -> object:
    module = _SINK_CONFIGS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"wrapalert.sinks.{module}"), name)


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path = Path("/run/wrapalert/notify.sock")
    state_dir: Path = Path("/var/lib/wrapalert")
    spool_dir: Path = Path("/var/spool/wrapalert")
    control_socket: Path = Path("/run/wrapalert/control.sock")
    trusted_uids: tuple[int, ...] = (0,)
    socket_mode: int = 0o666
    shutdown_grace: float = 10.0
    # Group commit: state is written at least this often (and at once for digests).
    commit_interval: float = 0.1
    # Clients spool when our queue is full, not only when we are down: look again this often.
    spool_scan_interval: float = 2.0
    # The name digests, alerts and forwarded records give this host (one fleet, many names).
    hostname: str = field(default_factory=gethostname)


DAEMON_KEYS: KeyDocs = {
    "socket": "The datagram socket the clients send to, when the daemon binds it itself "
    "(under systemd, wrapalert.socket holds it). A restart applies a change.",
    "state_dir": "Where the state database lives: counters, groups, the outbox, silences.",
    "spool_dir": "Where clients leave events while the daemon is down or its queue is full; "
    "read at start and every spool_scan_interval.",
    "control_socket": "The stream socket (mode 0600) for status, flush, test-alert and silences.",
    "trusted_uids": "Senders (kernel-verified uids) whose events are alerts; events from "
    "other uids are kept apart and marked untrusted. The packaged service runs with "
    "PrivateUsers=yes and sees no uid but root and its own: a non-root uid here needs "
    "PrivateUsers=no in a drop-in (else the daemon refuses the config) and its own spool "
    "directory, a tmpfiles.d line: d /var/spool/wrapalert/UID 2770 UID wrapalert -.",
    "socket_mode": Key(
        "Mode of the socket when the daemon binds it: every wrapped service's user must "
        "write to it; trust comes from the kernel's credentials.",
        default='"0666"',
    ),
    "shutdown_grace": "Time the sinks get to deliver at shutdown; what is left stays in the "
    "outbox for the next start.",
    "commit_interval": "State is committed at least this often (group commit), and at once "
    "for each digest.",
    "spool_scan_interval": "How often the spool is read while running: clients also spool "
    "when the queue is full.",
    "hostname": Key(
        "The name digests, alert labels and webhook payloads give this host; set it when "
        "a fleet shares one Alertmanager. A restart applies a change.",
        default="the system's host name",
    ),
}


@dataclass(frozen=True)
class DigestConfig:
    group_by: tuple[str, ...] = ("daemon", "client_addr")
    group_wait: float = 10.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    # Groups that fall due within this window of each other share one digest.
    batch_window: float = 1.0
    template_dir: Path | None = None
    # False: no digest sink on purpose (else a config without one is refused).
    enabled: bool = True


DIGEST_KEYS: KeyDocs = {
    "group_by": "The event fields that make a group: daemon, client_addr, client_name, "
    "user, server, host, verdict.",
    "group_wait": "A new group waits this long before its first digest.",
    "group_interval": "Then new activity of a group is reported at most this often.",
    "repeat_interval": "A group with no news is reported again after this long.",
    "batch_window": "Groups due within this window of each other share one digest.",
    "template_dir": Key(
        "A directory whose subject.j2, mail.txt.j2 or mail.html.j2 replace the built-in templates.",
        default="unset: the built-in templates",
    ),
    "enabled": "Whether digests are meant to reach a mailbox. Any [[sink]] table replaces the "
    "default smtp sink, so a configuration whose sinks take no digests (none of smtp, "
    "sendmail, maildir) is refused, at start and at reload, unless this says false: say so "
    "when Alertmanager or a log shipper is where refusals are read. With false, a digest "
    "sink is refused instead.",
}


@dataclass(frozen=True)
class LimitsConfig:
    mails_per_hour: int = 12
    max_groups: int = 10000
    # Backoff between delivery attempts after a transient failure: doubles, jittered, capped.
    retry_min: float = 1.0
    retry_max: float = 300.0
    # An untrusted uid's single group is reported at most this often after its first report.
    untrusted_interval: float = 3600.0
    # Forwarding sinks (one record per event): at most this many records a second each;
    # past it, events are counted into a "held" record sent when the rate allows.
    events_per_second: float = 100.0
    # Untrusted events' own budget in every forwarding sink (never the trusted one's):
    # a local user's flood costs at most this many records a second, and then held records.
    untrusted_events_per_second: float = 1.0


LIMITS_KEYS: KeyDocs = {
    "mails_per_hour": "Digests per sink in any sliding hour (0: no cap); what waits is "
    "merged into the next digest, which says how much it held back.",
    "max_groups": "Groups kept in memory; past it, new sources roll up by network "
    "(/24, /64), then into one overflow group. Counts are never lost.",
    "retry_min": "First backoff after a transient delivery failure; it doubles, jittered.",
    "retry_max": "Longest backoff between delivery attempts.",
    "untrusted_interval": "An untrusted uid's group is reported at most this often.",
    "events_per_second": "Records each forwarding sink sends per second at most; past it, "
    "events are counted into one held record.",
    "untrusted_events_per_second": "Untrusted events' own budget in each forwarding sink "
    "(records a second); it never takes from the trusted one, and past it they are held "
    "apart from trusted events.",
}


@dataclass(frozen=True)
class ScanConfig:
    """The daemon's scan detector (pipeline/scan.py)."""

    enabled: bool = True
    window: float = 600.0  # seconds in which the distinct daemons or sources must fall
    daemons: int = 3  # distinct daemons refusing one address
    sources: int = 16  # distinct addresses refused in one /24 or /64
    severity: str = "critical"  # the group that completes a scan is raised to at least this

    @property
    def rule(self) -> ScanRule:
        """What a scan is, by these numbers: for the detector and the digest alike."""
        return ScanRule(self.window, self.daemons, self.sources)


SCAN_KEYS: KeyDocs = {
    "enabled": "Whether the scan detector runs.",
    "window": "The time in which the distinct daemons or sources of a scan must fall.",
    "daemons": "Distinct daemons refusing one address that make a scan.",
    "sources": "Distinct addresses refused in one /24 or /64 that make a sweep.",
    "severity": "The group that completes a scan is raised to at least this severity "
    "(info, warning, critical).",
}


@dataclass(frozen=True)
class StoryConfig:
    """The digest's story thresholds (wrapalert/story.py); scans and sweeps are `[scan]`'s."""

    brute_force: int = 20  # refusals of one address by one daemon in one digest
    persistent: float = 3600.0  # known this long before a digest's window: "persistent"

    @property
    def rule(self) -> StoryRule:
        return StoryRule(self.brute_force, self.persistent)


@dataclass(frozen=True)
class RouteConfig:
    """First matching route wins: it sets a group's severity and the sinks it goes to."""

    match: tuple[str, ...] = ()  # field=value matchers, as for silences, plus trust=...
    severity: str = DEFAULT_SEVERITY
    sinks: tuple[str, ...] | None = None  # None: every sink


ROUTE_KEYS: KeyDocs = {
    "match": Key(
        "field=value matchers (as for silences; also trust=trusted|untrusted); all must "
        "match. The first matching [[route]] wins.",
        default="[]: every event",
    ),
    "severity": "The severity of the groups this route matches (info, warning, critical).",
    "sinks": Key(
        "The sinks (by name) these groups go to.",
        default="every sink",
        example=["smtp"],
    ),
}


@dataclass(frozen=True)
class IgnoreConfig:
    """Events never notified (but counted): client networks and daemon names."""

    networks: tuple[str, ...] = ()
    daemons: tuple[str, ...] = ()


IGNORE_KEYS: KeyDocs = {
    "networks": "Client networks (CIDR) whose events are counted but never notified.",
    "daemons": "Daemon names whose events are counted but never notified.",
}


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics in a file for node_exporter's textfile collector (off: None)."""

    textfile: Path | None = None
    interval: float = 15.0


METRICS_KEYS: KeyDocs = {
    "textfile": Key(
        "A file, named *.prom, the daemon writes Prometheus metrics to (atomically, every "
        "interval), for node_exporter's textfile collector, e.g. "
        "/var/lib/prometheus/node-exporter/wrapalert.prom.",
        default="unset: no metrics",
    ),
    "interval": "How often the file is written.",
}


def _default_sinks() -> tuple[SinkConfig, ...]:
    """One smtp sink with its defaults: what a config without [[sink]] tables gets."""
    from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

    smtp = registry.get("smtp")
    assert smtp is not None  # noqa: S101 - wrapalert/sinks/smtp.py declares it
    return (smtp.config(),)


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sinks: tuple[SinkConfig, ...] = field(default_factory=_default_sinks)
    source: str = "built-in defaults"
    ignore: IgnoreConfig = field(default_factory=IgnoreConfig)
    routes: tuple[RouteConfig, ...] = ()
    scan: ScanConfig = field(default_factory=ScanConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    story: StoryConfig = field(default_factory=StoryConfig)


def load(path: Path | None = None) -> Config:
    """Read and validate a config file; a missing file gives the built-in defaults."""
    target = path or DEFAULT_PATH
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is not None:
            raise ConfigError(f"{target}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read: {exc}") from None
    return loads(text, str(target))


def loads(text: str, source: str = "<config>") -> Config:
    """Validate TOML text; errors name `source`, the line and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return _Parser(text, source).config(data)


class _Parser:
    """Walks the parsed TOML, table by table, remembering where each key was written."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def error(self, table: str, index: int | None, key: str, problem: str) -> ConfigError:
        line = self.locate(table, index, key)
        where = f"{self.source}:{line}" if line else self.source
        label = f"[[{table}]] #{index + 1}" if index is not None else f"[{table}]"
        return ConfigError(f"{where}: {label} {key}: {problem}")

    def locate(self, table: str, index: int | None, key: str) -> int | None:
        """Line number of `key` in `[table]` (or the index-th `[[table]]`), else of the header."""
        current, count, header = "", -1, None
        key_re = re.compile(rf"""\s*(?:{re.escape(key)}|"{re.escape(key)}")\s*=""")
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            if line.startswith("["):
                is_array = line.startswith("[[")
                current = line.strip("[]").split("#")[0].strip().strip("[] ")
                if current == table:
                    count += 1 if is_array else 0
                    if index is None or count == index:
                        header = number
                continue
            here = current == table and (index is None or count == index)
            if here and key_re.match(line):
                return number
        return header

    def config(self, data: dict[str, Any]) -> Config:
        known = {
            "daemon",
            "digest",
            "limits",
            "sink",
            "ignore",
            "route",
            "scan",
            "metrics",
            "story",
        }
        for name in data:
            if name not in known:
                raise ConfigError(f"{self.source}: unknown table or key {name!r}")
        daemon = self._section(data, "daemon", DaemonConfig, self._daemon)
        digest = self._section(data, "digest", DigestConfig, self._digest)
        limits = self._section(data, "limits", LimitsConfig, self._limits)
        sinks_raw = data.get("sink", [])
        if not isinstance(sinks_raw, list):
            raise ConfigError(f"{self.source}: sink: use [[sink]] tables")
        sinks = tuple(self._sink(raw, i) for i, raw in enumerate(sinks_raw)) or Config().sinks
        names = [s.name for s in sinks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.error("sink", i, "name", f"duplicate sink name {name!r}")
        kinds = [raw.get("type") for raw in sinks_raw]  # each a table: _sink checked it
        if kinds.count("nftables") > 1:  # one table, one ban book: a second would fight it
            second = [i for i, k in enumerate(kinds) if k == "nftables"][1]
            raise self.error("sink", second, "type", "only one nftables sink may be configured")
        ignore = self._section(data, "ignore", IgnoreConfig, self._ignore)
        routes_raw = data.get("route", [])
        if not isinstance(routes_raw, list):
            raise ConfigError(f"{self.source}: route: use [[route]] tables")
        routes = tuple(self._route(raw, i, set(names)) for i, raw in enumerate(routes_raw))
        scan = self._section(data, "scan", ScanConfig, self._scan)
        metrics = self._section(data, "metrics", MetricsConfig, self._metrics)
        story = self._section(data, "story", StoryConfig, self._story)
        self._digest_sinks(sinks, digest, explicit=bool(sinks_raw))
        return Config(
            daemon, digest, limits, sinks, self.source, ignore, routes, scan, metrics, story
        )

    def _digest_sinks(
        self, sinks: tuple[SinkConfig, ...], digest: DigestConfig, *, explicit: bool
    ) -> None:
        """A [[sink]] table replaces the default smtp sink: one that leaves no sink taking
        digests must say it means it ([digest] enabled = false), and that key no sink that
        takes them."""
        from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

        kinds = [registry.of(sink).kind for sink in sinks]
        types = ", ".join(t.name for t in registry.all_types() if t.kind == "digest")
        if digest.enabled and "digest" not in kinds:
            line = self.locate("sink", 0, "type")
            where = f"{self.source}:{line}" if line else self.source
            raise ConfigError(
                f"{where}: [[sink]]: no sink takes digests ({types}), so refused connections "
                "would reach no mailbox: a [[sink]] table replaces the default smtp sink. "
                'Add it back:\n\n[[sink]]\ntype = "smtp"\nto = ["root"]\n\n'
                "or, if no digest is meant, set enabled = false in [digest]"
            )
        if not digest.enabled:
            if not explicit:
                raise self.error(
                    "digest",
                    None,
                    "enabled",
                    "false, but without [[sink]] tables the default smtp sink takes digests: "
                    "name the sinks you want",
                )
            taking = [s.name for s, kind in zip(sinks, kinds, strict=True) if kind == "digest"]
            if taking:
                raise self.error(
                    "digest",
                    None,
                    "enabled",
                    f"false, but sink {taking[0]!r} takes digests: remove one of the two",
                )

    def _section(
        self,
        data: dict[str, Any],
        name: str,
        default: Callable[[], _T],
        build: Callable[[_Table], _T],
    ) -> _T:
        raw = data.get(name)
        if raw is None:
            return default()
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: {name} must be a table")
        return build(_Table(self, name, None, raw))

    def _daemon(self, t: _Table) -> DaemonConfig:
        d = DaemonConfig()
        cfg = DaemonConfig(
            socket=t.socket_path("socket", d.socket),
            state_dir=t.path("state_dir", d.state_dir),
            spool_dir=t.path("spool_dir", d.spool_dir),
            control_socket=t.socket_path("control_socket", d.control_socket),
            trusted_uids=tuple(t.int_list("trusted_uids", d.trusted_uids)),
            socket_mode=t.mode("socket_mode", d.socket_mode),
            shutdown_grace=t.duration("shutdown_grace", d.shutdown_grace),
            commit_interval=t.duration("commit_interval", d.commit_interval),
            spool_scan_interval=t.duration("spool_scan_interval", d.spool_scan_interval),
            hostname=t.get("hostname", d.hostname, str),
        )
        if "hostname" in t.raw and not HOSTNAME.fullmatch(cfg.hostname):
            # It goes into Message-IDs, mail headers and Alertmanager labels: a plain name.
            raise t.error("hostname", f"{cfg.hostname!r}: use letters, digits, '.', '-', '_'")
        t.done()
        return cfg

    def _digest(self, t: _Table) -> DigestConfig:
        d = DigestConfig()
        group_by = tuple(t.str_list("group_by", d.group_by))
        for name in group_by:
            if name not in FIELDS:
                raise t.error("group_by", f"unknown field {name!r}; use {sorted(FIELDS)}")
        if not group_by:
            raise t.error("group_by", "needs at least one field")
        if len(set(group_by)) != len(group_by):
            raise t.error("group_by", "names a field twice")
        template_dir = t.get("template_dir", None, str)
        cfg = DigestConfig(
            group_by=group_by,
            group_wait=t.duration("group_wait", d.group_wait),
            group_interval=t.duration("group_interval", d.group_interval),
            repeat_interval=t.duration("repeat_interval", d.repeat_interval),
            batch_window=t.duration("batch_window", d.batch_window),
            template_dir=Path(template_dir) if template_dir else None,
            enabled=t.get("enabled", d.enabled, bool),
        )
        t.done()
        return cfg

    def _limits(self, t: _Table) -> LimitsConfig:
        d = LimitsConfig()
        cfg = LimitsConfig(
            mails_per_hour=t.count("mails_per_hour", d.mails_per_hour),
            max_groups=t.count("max_groups", d.max_groups, minimum=1),
            retry_min=t.duration("retry_min", d.retry_min),
            retry_max=t.duration("retry_max", d.retry_max),
            untrusted_interval=t.duration("untrusted_interval", d.untrusted_interval),
            events_per_second=float(t.get("events_per_second", d.events_per_second, (int, float))),
            untrusted_events_per_second=float(
                t.get("untrusted_events_per_second", d.untrusted_events_per_second, (int, float))
            ),
        )
        if not 0 < cfg.events_per_second <= 1e6:
            raise t.error("events_per_second", "needs 0 < events_per_second <= 1000000")
        if not 0 < cfg.untrusted_events_per_second <= 1e6:
            raise t.error(
                "untrusted_events_per_second", "needs 0 < untrusted_events_per_second <= 1000000"
            )
        if cfg.retry_min <= 0 or cfg.retry_max < cfg.retry_min:
            raise t.error("retry_max", "needs 0 < retry_min <= retry_max")
        t.done()
        return cfg

    def _scan(self, t: _Table) -> ScanConfig:
        d = ScanConfig()
        cfg = ScanConfig(
            enabled=t.get("enabled", d.enabled, bool),
            window=t.duration("window", d.window),
            daemons=t.count("daemons", d.daemons, minimum=2, maximum=1000),
            sources=t.count("sources", d.sources, minimum=2, maximum=1000),
            severity=t.get("severity", d.severity, str),
        )
        if cfg.window <= 0:
            raise t.error("window", "must be more than 0")
        if cfg.severity not in SEVERITIES:
            raise t.error("severity", f"{cfg.severity!r}: use {', '.join(SEVERITIES)}")
        t.done()
        return cfg

    def _metrics(self, t: _Table) -> MetricsConfig:
        d = MetricsConfig()
        given = t.get("textfile", None, str)
        textfile = None if given is None else t.path("textfile", Path(given))
        if textfile is not None and not textfile.name.endswith(".prom"):
            # node_exporter's textfile collector reads *.prom files only.
            raise t.error("textfile", f"{str(textfile)!r}: the name must end in .prom")
        cfg = MetricsConfig(textfile=textfile, interval=t.duration("interval", d.interval))
        if cfg.interval < 1:
            raise t.error("interval", "must be at least 1s")
        t.done()
        return cfg

    def _story(self, t: _Table) -> StoryConfig:
        d = StoryConfig()
        cfg = StoryConfig(
            brute_force=t.count("brute_force", d.brute_force, minimum=2, maximum=1_000_000),
            persistent=t.duration("persistent", d.persistent),
        )
        if cfg.persistent <= 0:
            raise t.error("persistent", "must be more than 0")
        t.done()
        return cfg

    def _ignore(self, t: _Table) -> IgnoreConfig:
        networks = t.str_list("networks", ())
        for net in networks:
            try:
                parse_network(net)
            except ValueError:
                raise t.error("networks", f"{net!r} is not a network (CIDR)") from None
        cfg = IgnoreConfig(tuple(networks), tuple(t.str_list("daemons", ())))
        t.done()
        return cfg

    def _route(self, raw: object, index: int, sinks: set[str]) -> RouteConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: [[route]] #{index + 1} must be a table")
        t = _Table(self, "route", index, raw)
        match = t.str_list("match", ())
        try:
            Selector.parse(match)
        except MatcherError as exc:
            raise t.error("match", str(exc)) from None
        severity = t.get("severity", DEFAULT_SEVERITY, str)
        if severity not in SEVERITIES:
            raise t.error("severity", f"{severity!r}: use {', '.join(SEVERITIES)}")
        targets = t.str_list("sinks", ()) if "sinks" in raw else None
        if targets == []:
            raise t.error("sinks", "empty: name at least one sink, or leave it out for all")
        for name in targets or ():
            if name not in sinks:
                raise t.error("sinks", f"no sink named {name!r}; sinks: {sorted(sinks)}")
        t.done()
        return RouteConfig(tuple(match), severity, tuple(targets) if targets is not None else None)

    def _sink(self, raw: object, index: int) -> SinkConfig:
        """A [[sink]] table, read by the parser its type's module declares."""
        from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: [[sink]] #{index + 1} must be a table")
        t = _Table(self, "sink", index, raw)
        kind = t.get("type", None, str)
        if kind is None:
            raise t.error("type", f"missing; use {registry.known()}")
        sink_type = registry.get(kind)
        if sink_type is None:
            raise t.error("type", f"unknown sink type {kind!r}; use {registry.known()}")
        cfg: SinkConfig = sink_type.parse(t)
        t.done()
        return cfg
