"""One TOML table and the value parsers its keys share: stdlib only, below config.py
and every sink module.

A `Table` is one table of the file as tomllib gave it, with a locator that turns
a problem with a key into a `ConfigError` naming the file and the line. Its
`get` checks a value's TOML type and records the key as read, so `done` can
call whatever is left an unknown key. wrapalert/confkeys.py reads whole tables
into their dataclasses with it; the pure parsers below (durations, URLs, mail
addresses) raise ValueError and are shared with the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Any, Protocol
from urllib.parse import urlsplit

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+(@[A-Za-z0-9.-]+)?")
# A host's name as wrapalert gives it ([daemon] hostname) and the fleet reads it back
# (alert labels, fleet_hosts): it goes into Message-IDs, mail headers and labels.
HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class SinkConfig(Protocol):
    """What every sink's config dataclass has: the name status and routes use."""

    @property
    def name(self) -> str: ...


class EventSinkConfig(SinkConfig, Protocol):
    """An event (forwarding) sink's config: its own rate, or None for [limits] events_per_second."""

    @property
    def events_per_second(self) -> float | None: ...


class Locator(Protocol):
    """Who turns a problem with a key into a ConfigError naming the file and line."""

    def error(self, table: str, index: int | None, key: str, problem: str) -> ConfigError: ...


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "10s", "5m", "4h", "1d", "1h30m", "0" or a plain number of
    seconds."""
    if isinstance(value, bool):
        raise TypeError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif value == "0":  # zero needs no unit: how a key says "off" (heartbeat, quiet_after)
        seconds = 0.0
    elif isinstance(value, str) and value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))
    else:
        raise ValueError(f'bad duration {value!r} (use "500ms", "10s", "5m", "4h" or seconds)')
    if not 0 <= seconds < 10 * 365 * 86400:
        raise ValueError(f"duration out of range: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """10.0 -> "10s", 300.0 -> "5m", 0.1 -> "100ms": the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def resolvable_name(host: str) -> bool:
    """Whether the resolver can be asked about `host` at all: no empty or over-long
    label. (It raises UnicodeError, not OSError, at send time otherwise.)"""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


@dataclass(frozen=True)
class HttpUrl:
    """An http(s) URL the forwarding sinks POST to, parsed once, when the config is read:
    what the request needs of it (wrapalert/sinks/http.py)."""

    text: str  # as written
    tls: bool
    host: str  # without brackets
    port: int
    path: str  # path and query, as the request line carries them ("/" for none)

    @classmethod
    def parse(cls, text: str) -> HttpUrl:
        """ValueError, naming the URL and what is wrong, for one that cannot be POSTed to:
        not http(s), no host, or anything ambiguous (spaces, credentials, a #fragment)."""
        # urlsplit silently drops tabs and newlines: look before it does.
        if not text.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
            problem = "must be ASCII without spaces or control characters (percent-encode them)"
            raise ValueError(f"{text!r} {problem}")
        try:
            parts = urlsplit(text)
            port = parts.port  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a URL ({exc})") from None
        host = parts.hostname or ""
        checks = (
            (parts.scheme not in ("http", "https"), "must start with http:// or https://"),
            (not host, "has no host"),
            (not resolvable_name(host), "has a host name with an empty or long label"),
            (
                parts.username is not None or parts.password is not None,
                "must not hold credentials (they would show in logs)",
            ),
            (bool(parts.fragment) or text.endswith("#"), "must not have a #fragment"),
        )
        if wrong := next((problem for failed, problem in checks if failed), None):
            raise ValueError(f"{text!r} {wrong}")
        tls = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(text, tls, host, port or (443 if tls else 80), path)

    def __str__(self) -> str:
        return self.text

    @property
    def host_header(self) -> str:
        """Host: the port only when it is not the scheme's own, an IPv6 address bracketed."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == (443 if self.tls else 80) else f"{shown}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host_header}"

    def under(self, suffix: str) -> HttpUrl:
        """This URL with `suffix` after its path (which must hold no query)."""
        path = self.path.rstrip("/") + suffix
        return HttpUrl(self.text.rstrip("/") + suffix, self.tls, self.host, self.port, path)


def mail_address(value: str) -> str:
    """`value` if the mail can carry it: our pattern, then the email package's own parser."""
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not a mail address")
    try:
        Address(addr_spec=value if "@" in value else f"{value}@localhost")
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise ValueError(f"{value!r} is not a mail address ({exc})") from None
    return value


_MISSING = object()
_TOML_NAMES = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
}


@dataclass
class Table:
    """One TOML table (the index-th of an array of tables, or the only one): values
    read by type, and whatever was never read is an unknown key."""

    locator: Locator
    name: str
    index: int | None
    raw: dict[str, Any]
    consumed: set[str] = field(default_factory=set, init=False)

    def error(self, key: str, problem: str) -> ConfigError:
        return self.locator.error(self.name, self.index, key, problem)

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

    def done(self) -> None:
        for key in self.raw:
            if key not in self.consumed:
                raise self.error(key, "unknown key")
