"""Configuration: TOML in, frozen dataclasses out, validated once at the edge.

A missing file means built-in defaults. A bad file raises `ConfigError` whose
message names the file, the line and the key, e.g.
``/etc/wrapalert/wrapalert.toml:12: [digest] group_wait: bad duration "ten"``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from wrapalert.match import (
    DEFAULT_SEVERITY,
    FIELDS,
    SEVERITIES,
    MatcherError,
    Selector,
    parse_network,
)
from wrapalert.scanrule import ScanRule

DEFAULT_PATH = Path("/etc/wrapalert/wrapalert.toml")
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
_T = TypeVar("_T")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


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


@dataclass(frozen=True)
class DigestConfig:
    group_by: tuple[str, ...] = ("daemon", "client_addr")
    group_wait: float = 10.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    # Groups that fall due within this window of each other share one digest.
    batch_window: float = 1.0
    template_dir: Path | None = None


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


@dataclass(frozen=True)
class SmtpSinkConfig:
    name: str = "smtp"
    host: str = "localhost"
    port: int = 25
    tls: str = "none"
    from_addr: str = "wrapalert@localhost"
    to: tuple[str, ...] = ("root",)
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class MaildirSinkConfig:
    name: str = "maildir"
    path: Path = Path("/var/mail/wrapalert/Maildir")
    from_addr: str = "wrapalert@localhost"
    to: tuple[str, ...] = ("root",)


@dataclass(frozen=True)
class SendmailSinkConfig:
    """A digest sink for hosts without an SMTP listener: the message piped to a command."""

    name: str = "sendmail"
    command: tuple[str, ...] = ("/usr/sbin/sendmail", "-t", "-oi")
    from_addr: str = "wrapalert@localhost"
    to: tuple[str, ...] = ("root",)
    timeout: float = 60.0


@dataclass(frozen=True)
class JsonlSinkConfig:
    """A forwarding sink: one JSON object per event, appended to a file for log shippers."""

    name: str = "jsonl"
    path: Path = Path("/var/log/wrapalert/events.jsonl")
    events_per_second: float | None = None  # None: [limits] events_per_second


# Syslog facility codes (RFC 5424 table 1) a sender may use; kern (0) is the kernel's own.
SYSLOG_FACILITIES = {
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
SYSLOG_PROTOCOLS = ("udp", "tcp")
# RFC 3164 TAG (RFC 5424 APP-NAME allows more): what every receiver parses alike.
SYSLOG_IDENT = re.compile(r"[A-Za-z0-9._-]{1,32}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")  # or an IPv4 address


def resolvable_name(host: str) -> bool:
    """Whether the resolver can be asked about `host` at all: no empty or over-long
    label. (It raises UnicodeError, not OSError, at send time otherwise.)"""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


@dataclass(frozen=True)
class SyslogSinkConfig:
    """A forwarding sink: one syslog line per event, RFC 3164 to the local socket or
    RFC 5424 over UDP or TCP to a collector (`address`)."""

    name: str = "syslog"
    socket: Path = Path("/dev/log")
    address: tuple[str, int] | None = None  # (host, port) of a collector; None: `socket`
    protocol: str = "udp"
    facility: str = "authpriv"
    ident: str = "wrapalert"
    # How long a send may wait: for room in a full local queue, or to connect and write.
    timeout: float = 5.0
    events_per_second: float | None = None  # None: [limits] events_per_second


@dataclass(frozen=True)
class JournaldSinkConfig:
    """A forwarding sink: one journal entry per event, native protocol, WRAPALERT_* fields."""

    name: str = "journald"
    socket: Path = Path("/run/systemd/journal/socket")
    timeout: float = 5.0  # how long a send may wait for room in journald's queue
    events_per_second: float | None = None  # None: [limits] events_per_second


@dataclass(frozen=True)
class AlertmanagerSinkConfig:
    """A forwarding sink: alerts POSTed to every Alertmanager of a cluster (API v2)."""

    name: str = "alertmanager"
    urls: tuple[str, ...] = ("http://127.0.0.1:9093",)
    timeout: float = 10.0
    # An alert stays firing this long after its last event (endsAt = last seen + this).
    resolve_after: float = 900.0
    labels: tuple[tuple[str, str], ...] = ()  # extra static labels, e.g. (("env", "prod"),)
    events_per_second: float | None = None  # None: [limits] events_per_second


@dataclass(frozen=True)
class WebhookSinkConfig:
    """A forwarding sink: records as one JSON POST per batch, for chat and paging tools."""

    url: str
    name: str = "webhook"
    timeout: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, e.g. Authorization
    events_per_second: float | None = None  # None: [limits] events_per_second


SinkConfig = (
    SmtpSinkConfig
    | MaildirSinkConfig
    | SendmailSinkConfig
    | JsonlSinkConfig
    | SyslogSinkConfig
    | JournaldSinkConfig
    | AlertmanagerSinkConfig
    | WebhookSinkConfig
)
SINK_TYPES = (
    '"smtp", "maildir", "sendmail", "jsonl", "syslog", "journald", "alertmanager" or "webhook"'
)
# Alertmanager's (Prometheus') label names; "__" starts the reserved ones.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The labels the alertmanager sink sets itself: static labels may not replace them.
ALERT_LABELS = frozenset({"alertname", "daemon", "client_addr", "host", "trust"})
# RFC 9110 token: a header field name.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the request (wrapalert.sinks.http sets them) or that the sink sets.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class RouteConfig:
    """First matching route wins: it sets a group's severity and the sinks it goes to."""

    match: tuple[str, ...] = ()  # field=value matchers, as for silences, plus trust=...
    severity: str = DEFAULT_SEVERITY
    sinks: tuple[str, ...] | None = None  # None: every sink


@dataclass(frozen=True)
class IgnoreConfig:
    """Events never notified (but counted): client networks and daemon names."""

    networks: tuple[str, ...] = ()
    daemons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sinks: tuple[SinkConfig, ...] = (SmtpSinkConfig(),)
    source: str = "built-in defaults"
    ignore: IgnoreConfig = field(default_factory=IgnoreConfig)
    routes: tuple[RouteConfig, ...] = ()
    scan: ScanConfig = field(default_factory=ScanConfig)


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "10s", "5m", "4h", "1d", "1h30m" or a plain number of seconds."""
    if isinstance(value, bool):
        raise TypeError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))
    else:
        raise ValueError(f'bad duration {value!r} (use "500ms", "10s", "5m", "4h" or seconds)')
    if not 0 <= seconds < 10 * 365 * 86400:
        raise ValueError(f"duration out of range: {value!r}")
    return seconds


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
        known = {"daemon", "digest", "limits", "sink", "ignore", "route", "scan"}
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
        ignore = self._section(data, "ignore", IgnoreConfig, self._ignore)
        routes_raw = data.get("route", [])
        if not isinstance(routes_raw, list):
            raise ConfigError(f"{self.source}: route: use [[route]] tables")
        routes = tuple(self._route(raw, i, set(names)) for i, raw in enumerate(routes_raw))
        scan = self._section(data, "scan", ScanConfig, self._scan)
        return Config(daemon, digest, limits, sinks, self.source, ignore, routes, scan)

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
        )
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
        )
        if not 0 < cfg.events_per_second <= 1e6:
            raise t.error("events_per_second", "needs 0 < events_per_second <= 1000000")
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

    def _sink(self, raw: object, index: int) -> SinkConfig:  # noqa: C901, PLR0912 - a branch per sink type
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: [[sink]] #{index + 1} must be a table")
        t = _Table(self, "sink", index, raw)
        kind = t.get("type", None, str)
        cfg: SinkConfig
        if kind == "smtp":
            d = SmtpSinkConfig()
            tls = t.get("tls", d.tls, str)
            if tls not in ("none", "starttls", "tls"):
                raise t.error("tls", f'{tls!r}: use "none", "starttls" or "tls"')
            cfg = SmtpSinkConfig(
                name=t.get("name", "smtp", str),
                host=t.get("host", d.host, str),
                port=t.count("port", d.port, minimum=1, maximum=65535),
                tls=tls,
                from_addr=t.address("from", d.from_addr),
                to=t.addresses("to", d.to),
                username=t.get("username", None, str),
                password=t.get("password", None, str),
                timeout=t.positive_duration("timeout", d.timeout),
            )
        elif kind == "maildir":
            m = MaildirSinkConfig()
            cfg = MaildirSinkConfig(
                name=t.get("name", "maildir", str),
                path=t.path("path", m.path),
                from_addr=t.address("from", m.from_addr),
                to=t.addresses("to", m.to),
            )
        elif kind == "sendmail":
            cfg = self._sendmail(t)
        elif kind == "jsonl":
            j = JsonlSinkConfig()
            rate = t.get("events_per_second", None, (int, float))
            if rate is not None and not 0 < rate <= 1e6:
                raise t.error("events_per_second", f"{rate} is out of range (0, 1000000]")
            cfg = JsonlSinkConfig(
                name=t.get("name", "jsonl", str),
                path=t.path("path", j.path),
                events_per_second=None if rate is None else float(rate),
            )
        elif kind == "syslog":
            cfg = self._syslog(t)
        elif kind == "journald":
            cfg = self._journald(t)
        elif kind == "alertmanager":
            cfg = self._alertmanager(t)
        elif kind == "webhook":
            cfg = self._webhook(t)
        elif kind is None:
            raise t.error("type", f"missing; use {SINK_TYPES}")
        else:
            raise t.error("type", f"unknown sink type {kind!r}; use {SINK_TYPES}")
        t.consumed.add("type")
        t.done()
        return cfg

    def _sendmail(self, t: _Table) -> SendmailSinkConfig:
        d = SendmailSinkConfig()
        command = tuple(t.str_list("command", d.command))
        if not command or not command[0].startswith("/"):
            raise t.error("command", "needs an absolute program first, e.g. /usr/sbin/sendmail")
        for word in command:
            if not word or any(ord(c) < 32 or ord(c) == 127 for c in word):
                raise t.error("command", f"{word!r}: empty, or holds a control character")
        return SendmailSinkConfig(
            name=t.get("name", "sendmail", str),
            command=command,
            from_addr=t.address("from", d.from_addr),
            to=t.addresses("to", d.to),
            timeout=t.positive_duration("timeout", d.timeout),
        )

    def _syslog(self, t: _Table) -> SyslogSinkConfig:
        d = SyslogSinkConfig()
        address = self._syslog_address(t) if "address" in t.raw else None
        if address is not None and "socket" in t.raw:
            raise t.error("address", "use socket (local) or address (a collector), not both")
        if address is None and "protocol" in t.raw:
            raise t.error("protocol", "only with address (the local socket takes datagrams)")
        protocol = t.get("protocol", d.protocol, str)
        if protocol not in SYSLOG_PROTOCOLS:
            raise t.error("protocol", f'{protocol!r}: use "udp" or "tcp"')
        facility = t.get("facility", d.facility, str)
        if facility not in SYSLOG_FACILITIES:
            raise t.error("facility", f"{facility!r}: use one of {', '.join(SYSLOG_FACILITIES)}")
        ident = t.get("ident", d.ident, str)
        if not SYSLOG_IDENT.fullmatch(ident):
            raise t.error("ident", f'{ident!r}: use 1 to 32 letters, digits, ".", "_" or "-"')
        return SyslogSinkConfig(
            name=t.get("name", d.name, str),
            socket=t.socket_path("socket", d.socket),
            address=address,
            protocol=protocol,
            facility=facility,
            ident=ident,
            timeout=t.positive_duration("timeout", d.timeout),
            events_per_second=_rate(t),
        )

    def _syslog_address(self, t: _Table) -> tuple[str, int]:
        """Parse `address`: "host:port" or "[IPv6]:port" (514 is only a convention: no default)."""
        text: str = t.get("address", None, str)
        host, colon, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise t.error("address", f"{text!r}: [{host}] is not an IPv6 address") from None
        elif ":" in host:
            raise t.error("address", f'{text!r}: write IPv6 in brackets, e.g. "[2001:db8::1]:514"')
        elif not _HOST_NAME.fullmatch(host) or not resolvable_name(host):
            host = ""
        if not colon or not host or not re.fullmatch(r"[0-9]{1,5}", port):
            raise t.error("address", f'{text!r}: use "host:port", e.g. "collector.example:514"')
        if not 1 <= int(port) <= 65535:
            raise t.error("address", f"{text!r}: port {int(port)} is out of range 1..65535")
        return host, int(port)

    def _journald(self, t: _Table) -> JournaldSinkConfig:
        d = JournaldSinkConfig()
        return JournaldSinkConfig(
            name=t.get("name", d.name, str),
            socket=t.socket_path("socket", d.socket),
            timeout=t.positive_duration("timeout", d.timeout),
            events_per_second=_rate(t),
        )

    def _alertmanager(self, t: _Table) -> AlertmanagerSinkConfig:
        d = AlertmanagerSinkConfig()
        urls = t.str_list("urls", d.urls)
        if not urls:
            raise t.error("urls", "needs at least one Alertmanager URL")
        for url in urls:
            # The API path is appended to each URL: a query would end up in the middle.
            if problem := _url_problem(url) or ("must not have a ?query" if "?" in url else None):
                raise t.error("urls", f"{url!r} {problem}")
        if len(set(urls)) != len(urls):
            raise t.error("urls", "lists a URL twice (each would get every alert twice)")
        labels = t.get("labels", {}, dict)
        for name, value in labels.items():
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise t.error("labels", f"{name!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name in ALERT_LABELS:
                raise t.error("labels", f"{name!r} is set by wrapalert; use another name")
            if not isinstance(value, str) or not value:
                raise t.error("labels", f"{name}: expected a non-empty string")
        return AlertmanagerSinkConfig(
            name=t.get("name", d.name, str),
            urls=tuple(urls),
            timeout=t.positive_duration("timeout", d.timeout),
            resolve_after=t.positive_duration("resolve_after", d.resolve_after),
            labels=tuple(sorted(labels.items())),
            events_per_second=_rate(t),
        )

    def _webhook(self, t: _Table) -> WebhookSinkConfig:
        url = t.get("url", None, str)
        if url is None:
            raise t.error("url", "missing; the webhook needs an http:// or https:// URL")
        if problem := _url_problem(url):
            raise t.error("url", f"{url!r} {problem}")
        headers = t.get("headers", {}, dict)
        lowered = [name.lower() for name in headers]
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise t.error("headers", f"{name!r} is not a header name")
            if lowered.count(name.lower()) > 1:  # header names ignore case: both would go
                raise t.error("headers", f"{name!r} is given twice (names ignore case)")
            if name.lower() in _OWN_HEADERS:
                raise t.error("headers", f"{name!r} is set by wrapalert")
            if not isinstance(value, str):
                raise t.error("headers", f"{name}: expected a string")
            # A line break would let the value start a header (or a body) of its own.
            if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
                raise t.error("headers", f"{name}: holds a line break or control character")
            if not value.isascii():  # header bytes are latin-1 at best; ASCII is safe
                raise t.error("headers", f"{name}: use ASCII (encode the value)")
        return WebhookSinkConfig(
            url=url,
            name=t.get("name", "webhook", str),
            timeout=t.positive_duration("timeout", WebhookSinkConfig.timeout),
            headers=tuple(headers.items()),
            events_per_second=_rate(t),
        )


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be POSTed to (None: it can): http(s), a host, nothing ambiguous."""
    # urlsplit silently drops tabs and newlines: look before it does.
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must be ASCII without spaces or control characters (percent-encode them)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    checks = (
        (parts.scheme not in ("http", "https"), "must start with http:// or https://"),
        (not parts.hostname, "has no host"),
        (not resolvable_name(parts.hostname or ""), "has a host name with an empty or long label"),
        (parts.username is not None or parts.password is not None, "must not hold credentials"),
        (bool(parts.fragment) or url.endswith("#"), "must not have a #fragment"),
    )
    return next((problem for failed, problem in checks if failed), None)


def _rate(t: _Table) -> float | None:
    """A forwarding sink's own events_per_second (None: the [limits] one)."""
    rate = t.get("events_per_second", None, (int, float))
    if rate is not None and not 0 < rate <= 1e6:
        raise t.error("events_per_second", f"{rate} is out of range (0, 1000000]")
    return None if rate is None else float(rate)


_MISSING = object()
_TOML_NAMES = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
}
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+(@[A-Za-z0-9.-]+)?")


class _Table:
    """One TOML table: typed getters that record what was read, so leftovers are errors."""

    def __init__(self, parser: _Parser, name: str, index: int | None, raw: dict[str, Any]) -> None:
        self.parser, self.name, self.index, self.raw = parser, name, index, raw
        self.consumed: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return self.parser.error(self.name, self.index, key, problem)

    def get(self, key: str, default: Any, kind: type | tuple[type, ...]) -> Any:  # noqa: ANN401 - TOML values are dynamic until checked here
        self.consumed.add(key)
        value = self.raw.get(key, _MISSING)
        if value is _MISSING:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints to Python; never accept one where a number is meant.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(_TOML_NAMES.get(k, k.__name__) for k in kinds)
            got = _TOML_NAMES.get(type(value), type(value).__name__)
            raise self.error(key, f"expected {wanted}, got {got}")
        return value

    def path(self, key: str, default: Path) -> Path:
        value = self.get(key, str(default), str)
        if not value.startswith("/"):
            raise self.error(key, f"{value!r} must be an absolute path")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            # A newline would split the hosts.deny line; a NUL cannot be a path at all.
            raise self.error(key, f"{value!r} holds a control character")
        return Path(value)

    def socket_path(self, key: str, default: Path) -> Path:
        path = self.path(key, default)
        if len(bytes(path)) > MAX_SOCKET_PATH:
            raise self.error(key, f"{len(bytes(path))} bytes; AF_UNIX paths hold at most 107")
        return path

    def count(self, key: str, default: int, minimum: int = 0, maximum: int = 1 << 31) -> int:
        value: int = self.get(key, default, int)
        if not minimum <= value <= maximum:
            raise self.error(key, f"{value} is out of range {minimum}..{maximum}")
        return value

    def mode(self, key: str, default: int) -> int:
        value = self.get(key, default, (int, str))
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise self.error(key, f'{value!r}: use an octal string such as "0666"') from None
        if not 0 <= value <= 0o777:
            raise self.error(key, f"{value:o} is not a file mode")
        return int(value)

    def duration(self, key: str, default: float) -> float:
        value = self.get(key, default, (int, float, str))
        try:
            return parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None

    def positive_duration(self, key: str, default: float) -> float:
        value = self.duration(key, default)
        if value <= 0:
            raise self.error(key, "must be more than 0 (0 would fail every attempt)")
        return value

    def str_list(self, key: str, default: tuple[str, ...]) -> list[str]:
        value = self.get(key, list(default), list)
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return list(value)

    def int_list(self, key: str, default: tuple[int, ...]) -> list[int]:
        value = self.get(key, list(default), list)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise self.error(key, "expected a list of non-negative integers")
        return list(value)

    def address(self, key: str, default: str) -> str:
        value: str = self.get(key, default, str)
        self._check_address(key, value)
        return value

    def _check_address(self, key: str, value: str) -> None:
        """What the mail will need: our pattern, and the email package's own parser."""
        if not _ADDRESS.fullmatch(value):
            raise self.error(key, f"{value!r} is not a mail address")
        try:
            Address(addr_spec=value if "@" in value else f"{value}@localhost")
        except (ValueError, IndexError, HeaderParseError) as exc:
            raise self.error(key, f"{value!r} is not a mail address ({exc})") from None

    def addresses(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.str_list(key, default)
        if not values:
            raise self.error(key, "needs at least one recipient")
        for value in values:
            self._check_address(key, value)
        return tuple(values)

    def done(self) -> None:
        for key in self.raw:
            if key not in self.consumed:
                raise self.error(key, "unknown key")
