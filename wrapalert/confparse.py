"""Typed reading of one TOML table, shared by config.py and every sink module.

Stdlib only and below both: config.py walks the file and hands each table
to a `Table`; a sink module's parser reads its `[[sink]]` table with the same
getters (wrapalert/sinks/registry.py). Every getter records the key it read,
so `Table.done` can call whatever is left an unknown key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Key:
    """What the man page says of one key (wrapalert.toml(5), made by wrapalert/manpage.py
    from these and the config dataclasses' defaults; a test holds them to the parsers)."""

    text: str
    field: str | None = None  # the config dataclass's field, when not named like the key
    default: str | None = None  # shown instead of the field's default (one the host decides)
    example: object = None  # a value the parser takes: for a key without a default


# A table's keys, in the order the man page lists them: the text, or a Key.
KeyDocs = Mapping[str, "str | Key"]


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


def resolvable_name(host: str) -> bool:
    """Whether the resolver can be asked about `host` at all: no empty or over-long
    label. (It raises UnicodeError, not OSError, at send time otherwise.)"""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def url_problem(url: str) -> str | None:
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


def rate(t: Table) -> float | None:
    """An event sink's own events_per_second (None: the [limits] one)."""
    value = t.get("events_per_second", None, (int, float))
    if value is not None and not 0 < value <= 1e6:
        raise t.error("events_per_second", f"{value} is out of range (0, 1000000]")
    return None if value is None else float(value)


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


class Table:
    """One TOML table: typed getters that record what was read, so leftovers are errors."""

    def __init__(self, parser: Locator, name: str, index: int | None, raw: dict[str, Any]) -> None:
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
