"""Configuration: TOML in, frozen dataclasses of typed values out, parsed once at the edge.

Each table is a frozen dataclass whose fields are its keys, each declared once
with its words for wrapalert.toml(5), its type and its range
(wrapalert/confkeys.py). The values are what the parts take as they are:
seconds, paths, ipaddress networks (`[ignore] networks`; the nftables sink's
`allow`), a `Selector` (`[[route]] match`), `HttpUrl`s (the alertmanager and
webhook sinks'). A missing file means built-in defaults. A bad file raises
`ConfigError` whose message names the file, the line and the key, e.g.
``/etc/wrapalert/wrapalert.toml:12: [digest] group_wait: bad duration "ten"``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from socket import gethostname  # not `import socket`: DaemonConfig has a field of that name
from typing import Any

from wrapalert.confkeys import (
    Choice,
    Count,
    Duration,
    Flag,
    Mode,
    PathValue,
    Rate,
    Strings,
    Text,
    Uids,
    read,
    setting,
)
from wrapalert.confparse import HOSTNAME, ConfigError, SinkConfig, Table
from wrapalert.match import (
    DEFAULT_SEVERITY,
    FIELDS,
    SEVERITIES,
    Fields,
    IPNetwork,
    Selector,
    parse_network,
)
from wrapalert.scanrule import ScanRule
from wrapalert.story import StoryRule

DEFAULT_PATH = Path("/etc/wrapalert/wrapalert.toml")


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's sockets, directories and trust."""

    socket: Path = setting(
        Path("/run/wrapalert/notify.sock"),
        "The datagram socket the clients send to, when the daemon binds it itself "
        "(under systemd, wrapalert.socket holds it). A restart applies a change.",
        PathValue(socket=True),
    )
    state_dir: Path = setting(
        Path("/var/lib/wrapalert"),
        "Where the state database lives: counters, groups, the outbox, silences.",
        PathValue(),
    )
    spool_dir: Path = setting(
        Path("/var/spool/wrapalert"),
        "Where clients leave events while the daemon is down or its queue is full; "
        "read at start and every spool_scan_interval.",
        PathValue(),
    )
    control_socket: Path = setting(
        Path("/run/wrapalert/control.sock"),
        "The stream socket (mode 0600) for status, flush, test-alert and silences.",
        PathValue(socket=True),
    )
    trusted_uids: tuple[int, ...] = setting(
        (0,),
        "Senders (kernel-verified uids) whose events are alerts; events from "
        "other uids are kept apart and marked untrusted. The packaged service runs with "
        "PrivateUsers=yes and sees no uid but root and its own: a non-root uid here needs "
        "PrivateUsers=no in a drop-in (else the daemon refuses the config) and its own spool "
        "directory, a tmpfiles.d line: d /var/spool/wrapalert/UID 2770 UID wrapalert -.",
        Uids(),
    )
    socket_mode: int = setting(
        0o666,
        "Mode of the socket when the daemon binds it: every wrapped service's user must "
        "write to it; trust comes from the kernel's credentials.",
        Mode(),
    )
    shutdown_grace: float = setting(
        10.0,
        "Time the sinks get to deliver at shutdown; what is left stays in the "
        "outbox for the next start.",
        Duration(),
    )
    commit_interval: float = setting(
        0.1,
        "State is committed at least this often (group commit), and at once for each digest.",
        Duration(),
    )
    spool_scan_interval: float = setting(
        2.0,
        "How often the spool is read while running: clients also spool when the queue is full.",
        Duration(),
    )
    hostname: str = setting(
        factory=gethostname,
        text="The name digests, alert labels and webhook payloads give this host; set it when "
        "a fleet shares one Alertmanager. A restart applies a change.",
        kind=Text(HOSTNAME, "use letters, digits, '.', '-', '_'"),
        shown="the system's host name",
    )


def _group_by(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r}; use {sorted(FIELDS)}")
    if not names:
        raise ValueError("needs at least one field")
    if len(set(names)) != len(names):
        raise ValueError("names a field twice")
    return names


def _template_dir(text: str) -> Path | None:
    return Path(text) if text else None


@dataclass(frozen=True)
class DigestConfig:
    """How events are grouped into digests, and when they are sent."""

    group_by: tuple[str, ...] = setting(
        ("daemon", "client_addr"),
        "The event fields that make a group: daemon, client_addr, client_name, "
        "user, server, host, verdict.",
        Strings(),
        check=_group_by,
    )
    group_wait: float = setting(
        10.0, "A new group waits this long before its first digest.", Duration()
    )
    group_interval: float = setting(
        300.0, "Then new activity of a group is reported at most this often.", Duration()
    )
    repeat_interval: float = setting(
        4 * 3600.0, "A group with no news is reported again after this long.", Duration()
    )
    batch_window: float = setting(
        1.0, "Groups due within this window of each other share one digest.", Duration()
    )
    template_dir: Path | None = setting(
        None,
        "A directory whose subject.j2, mail.txt.j2 or mail.html.j2 replace the built-in templates.",
        Text(),
        check=_template_dir,
        shown="unset: the built-in templates",
    )
    enabled: bool = setting(
        True,
        "Whether digests are meant to reach a mailbox. Any [[sink]] table replaces the "
        "default smtp sink, so a configuration whose sinks take no digests (none of smtp, "
        "sendmail, maildir) is refused, at start and at reload, unless this says false: say so "
        "when Alertmanager or a log shipper is where refusals are read. With false, a digest "
        "sink is refused instead.",
        Flag(),
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Caps and backoff."""

    mails_per_hour: int = setting(
        12,
        "Digests per sink in any sliding hour (0: no cap); what waits is "
        "merged into the next digest, which says how much it held back.",
        Count(),
    )
    max_groups: int = setting(
        10000,
        "Groups kept in memory; past it, new sources roll up by network "
        "(/24, /64), then into one overflow group. Counts are never lost.",
        Count(minimum=1),
    )
    retry_min: float = setting(
        1.0,
        "First backoff after a transient delivery failure; it doubles, jittered.",
        Duration(),
    )
    retry_max: float = setting(300.0, "Longest backoff between delivery attempts.", Duration())
    untrusted_interval: float = setting(
        3600.0, "An untrusted uid's group is reported at most this often.", Duration()
    )
    events_per_second: float = setting(
        100.0,
        "Records each forwarding sink sends per second at most; past it, "
        "events are counted into one held record.",
        Rate(),
    )
    untrusted_events_per_second: float = setting(
        1.0,
        "Untrusted events' own budget in each forwarding sink "
        "(records a second); it never takes from the trusted one, and past it they are held "
        "apart from trusted events.",
        Rate(),
    )


def _retry_bounds(t: Table, cfg: LimitsConfig) -> None:
    if cfg.retry_min <= 0 or cfg.retry_max < cfg.retry_min:
        raise t.error("retry_max", "needs 0 < retry_min <= retry_max")


@dataclass(frozen=True)
class ScanConfig:
    """The scan detector."""

    enabled: bool = setting(True, "Whether the scan detector runs.", Flag())
    window: float = setting(
        600.0,
        "The time in which the distinct daemons or sources of a scan must fall.",
        Duration(inclusive=False),
    )
    daemons: int = setting(
        3,
        "Distinct daemons refusing one address that make a scan.",
        Count(minimum=2, maximum=1000),
    )
    sources: int = setting(
        16,
        "Distinct addresses refused in one /24 or /64 that make a sweep.",
        Count(minimum=2, maximum=1000),
    )
    severity: str = setting(
        "critical",
        "The group that completes a scan is raised to at least this severity "
        "(info, warning, critical).",
        Choice(SEVERITIES),
    )

    @property
    def rule(self) -> ScanRule:
        """What a scan is, by these numbers: for the detector and the digest alike."""
        return ScanRule(self.window, self.daemons, self.sources)


@dataclass(frozen=True)
class StoryConfig:
    """The thresholds of the digest's stories (scans and sweeps are [scan]'s)."""

    brute_force: int = setting(
        20,
        "Refusals of one address by one daemon within one digest that tell a brute force.",
        Count(minimum=2, maximum=1_000_000),
    )
    persistent: float = setting(
        3600.0,
        "A source known this long before a digest's window is persistent.",
        Duration(inclusive=False),
    )

    @property
    def rule(self) -> StoryRule:
        return StoryRule(self.brute_force, self.persistent)


def _some(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("empty: name at least one sink, or leave it out for all")
    return names


@dataclass(frozen=True)
class RouteConfig:
    """Routes, tried in order: the first whose matchers all match a new group sets its
    severity and its sinks."""

    match: Selector = setting(
        Selector(),
        "field=value matchers (as for silences; also trust=trusted|untrusted); all must "
        "match. The first matching [[route]] wins.",
        Strings(),
        check=Selector.parse,
        shown="[]: every event",
    )
    severity: str = setting(
        DEFAULT_SEVERITY,
        "The severity of the groups this route matches (info, warning, critical).",
        Choice(SEVERITIES),
    )
    sinks: tuple[str, ...] | None = setting(
        None,
        "The sinks (by name) these groups go to.",
        Strings(),
        check=_some,
        shown="every sink",
    )

    def matches(self, event: Fields) -> bool:
        return self.match.matches(event)


def _networks(texts: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks = []
    for text in texts:
        try:
            networks.append(parse_network(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a network (CIDR)") from None
    return tuple(networks)


@dataclass(frozen=True)
class IgnoreConfig:
    """Events counted in status but never notified."""

    networks: tuple[IPNetwork, ...] = setting(
        (),
        "Client networks (CIDR) whose events are counted but never notified.",
        Strings(),
        check=_networks,
    )
    daemons: tuple[str, ...] = setting(
        (), "Daemon names whose events are counted but never notified.", Strings()
    )


def _prom_file(path: Path) -> Path:
    if not path.name.endswith(".prom"):  # node_exporter's textfile collector reads only these
        raise ValueError(f"{str(path)!r}: the name must end in .prom")
    return path


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics for node_exporter's textfile collector."""

    textfile: Path | None = setting(
        None,
        "A file, named *.prom, the daemon writes Prometheus metrics to (atomically, every "
        "interval), for node_exporter's textfile collector, e.g. "
        "/var/lib/prometheus/node-exporter/wrapalert.prom.",
        PathValue(),
        check=_prom_file,
        shown="unset: no metrics",
    )
    interval: float = setting(15.0, "How often the file is written.", Duration(minimum=1.0))


@dataclass(frozen=True)
class HookConfig:
    """The alarm's watch over itself: the tables libwrap reads, whether the hook in them still
    reaches the daemon, and which daemons went quiet. Each finding that stops refusals
    reaching the daemon sends one alarm-off notice to every digest sink (past the mail cap),
    a WrapalertHookBroken alert to Alertmanager sinks, and makes wrapalert status exit 1;
    one alarm-on notice says when it is fixed."""

    watch: bool = setting(
        True,
        "Whether the daemon reads hosts_allow and hosts_deny at start and within seconds "
        "of any change (an editor's rename, an append in place, a bind mount's new "
        "content), with the linter of wrapalert check-hosts, and checks daily that the "
        "services that reported in the last 30 days still link libwrap.",
        Flag(),
    )
    hosts_allow: Path = setting(
        Path("/etc/hosts.allow"),
        "The hosts.allow libwrap reads: the watch and wrapalert canary read it too.",
        PathValue(),
    )
    hosts_deny: Path = setting(
        Path("/etc/hosts.deny"),
        "The hosts.deny that holds the hook line: the watch and wrapalert canary read it.",
        PathValue(),
    )
    quiet_after: float = setting(
        48 * 3600.0,
        "A daemon that averaged at least quiet_min refusals a day over the 7 days up to its "
        "last one, and has reported none for this long, gets one quiet notice (again only "
        'after it reported once more). "0" turns the quiet watch off.',
        Duration(),
    )
    quiet_min: int = setting(
        10,
        "Refusals a day, averaged over 7 days, that make a daemon's silence news.",
        Count(minimum=1),
    )


def _default_sinks() -> tuple[SinkConfig, ...]:
    """One smtp sink with its defaults: what a config without [[sink]] tables gets."""
    from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

    smtp = registry.get("smtp")
    assert smtp is not None  # noqa: S101 - wrapalert/sinks/smtp.py declares it
    return (smtp.config(),)


@dataclass(frozen=True)
class Config:
    """The whole file: a field per table (TABLES), the [[sink]]s and the [[route]]s."""

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
    hook: HookConfig = field(default_factory=HookConfig)


# The file's single tables, by name (each a field of Config of that name), and the
# checks across one table's keys (each key is checked as it is read).
TABLES: dict[str, type] = {
    "daemon": DaemonConfig,
    "digest": DigestConfig,
    "limits": LimitsConfig,
    "ignore": IgnoreConfig,
    "scan": ScanConfig,
    "metrics": MetricsConfig,
    "story": StoryConfig,
    "hook": HookConfig,
}
_CHECKS: dict[str, Callable[[Table, Any], None]] = {"limits": _retry_bounds}
ARRAYS = ("sink", "route")  # [[sink]] and [[route]]: Config's sinks and routes


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
        for name in data:
            if name not in TABLES and name not in ARRAYS:
                raise ConfigError(f"{self.source}: unknown table or key {name!r}")
        tables = {name: self._table(data, name, cls) for name, cls in TABLES.items()}
        sinks_raw = self._array(data, "sink")
        sinks = tuple(self._sink(raw, i) for i, raw in enumerate(sinks_raw)) or Config().sinks
        names = [s.name for s in sinks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.error("sink", i, "name", f"duplicate sink name {name!r}")
        kinds = [raw.get("type") for raw in sinks_raw]  # each a table: _sink checked it
        if kinds.count("nftables") > 1:  # one table, one ban book: a second would fight it
            second = [i for i, k in enumerate(kinds) if k == "nftables"][1]
            raise self.error("sink", second, "type", "only one nftables sink may be configured")
        routes_raw = self._array(data, "route")
        routes = tuple(self._route(raw, i, set(names)) for i, raw in enumerate(routes_raw))
        self._digest_sinks(sinks, tables["digest"], explicit=bool(sinks_raw))
        self._fleet(sinks)
        return Config(sinks=sinks, routes=routes, source=self.source, **tables)

    def _fleet(self, sinks: tuple[SinkConfig, ...]) -> None:
        """The nftables sink's `fleet` names an alertmanager sink: its peers share bans."""
        from wrapalert.sinks import registry  # noqa: PLC0415 - as above

        for i, sink in enumerate(sinks):
            fleet = getattr(sink, "fleet", None)
            if fleet is None:
                continue
            named = next((s for s in sinks if s.name == fleet), None)
            if named is None or registry.of(named).name != "alertmanager":
                ours = [s.name for s in sinks if registry.of(s).name == "alertmanager"]
                offer = f"alertmanager sinks: {ours}" if ours else "there is no alertmanager sink"
                problem = "is not an alertmanager sink" if named else "names no sink"
                raise self.error("sink", i, "fleet", f"{fleet!r} {problem} ({offer})")

    def _digest_sinks(
        self, sinks: tuple[SinkConfig, ...], digest: DigestConfig, *, explicit: bool
    ) -> None:
        """A [[sink]] table replaces the default smtp sink: one that leaves no sink taking
        digests must say it means it ([digest] enabled = false), and that key no sink that
        takes them."""
        from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

        kinds = [registry.of(sink).kind for sink in sinks]
        if digest.enabled and "digest" not in kinds:
            types = ", ".join(t.name for t in registry.all_types() if t.kind == "digest")
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

    def _table(self, data: dict[str, Any], name: str, cls: type[Any]) -> Any:  # noqa: ANN401 - one of TABLES
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: {name} must be a table")
        t = Table(self, name, None, raw)
        cfg = read(t, cls)
        if check := _CHECKS.get(name):
            check(t, cfg)
        t.done()
        return cfg

    def _array(self, data: dict[str, Any], name: str) -> list[Any]:
        raw = data.get(name, [])
        if not isinstance(raw, list):
            raise ConfigError(f"{self.source}: {name}: use [[{name}]] tables")
        for index, table in enumerate(raw):
            if not isinstance(table, dict):
                raise ConfigError(f"{self.source}: [[{name}]] #{index + 1} must be a table")
        return raw

    def _route(self, raw: dict[str, Any], index: int, sinks: set[str]) -> RouteConfig:
        t = Table(self, "route", index, raw)
        cfg = read(t, RouteConfig)
        for name in cfg.sinks or ():
            if name not in sinks:
                raise t.error("sinks", f"no sink named {name!r}; sinks: {sorted(sinks)}")
        t.done()
        return cfg

    def _sink(self, raw: dict[str, Any], index: int) -> SinkConfig:
        """A [[sink]] table, read into the config class its type's module declares."""
        from wrapalert.sinks import registry  # noqa: PLC0415 - sinks are imported when first needed

        t = Table(self, "sink", index, raw)
        kind = t.get("type", None, str)
        if kind is None:
            raise t.error("type", f"missing; use {registry.known()}")
        sink_type = registry.get(kind)
        if sink_type is None:
            raise t.error("type", f"unknown sink type {kind!r}; use {registry.known()}")
        cfg: SinkConfig = read(t, sink_type.config)
        if sink_type.check is not None:
            sink_type.check(t, cfg)
        t.done()
        return cfg
