"""A config key, written once: its field, its words, its type and range.

Every key of a config table is a field of the table's frozen dataclass, made by
`setting(default, text, kind)` (or `required(text, kind)`). The field holds the
parsed value; `text` is what wrapalert.toml(5) says of the key
(wrapalert/manpage.py); `kind` reads its TOML value: the types it may have, its
range, what it becomes (seconds, a Path, a tuple). `check`, when given, takes
the kind's value further (networks, a matcher list) and raises ValueError
naming the problem. `read(table, cls)` fills the dataclass from one table and
`keys(cls)` lists its keys; fields made otherwise are not keys.

An absent key takes its field's default as it is: defaults are ours, checked
by the tests, not by the parser. Stdlib only, as confparse below it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from wrapalert.confparse import (
    MAX_SOCKET_PATH,
    HttpUrl,
    Table,
    format_duration,
    mail_address,
    parse_duration,
)

T = TypeVar("T")
_SETTING = "wrapalert.setting"  # the field metadata's key


def either(options: tuple[str, ...]) -> str:
    """'"a", "b" or "c"': the values an error message offers."""
    quoted = [json.dumps(o) for o in options]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]


def toml(value: object) -> str:  # noqa: PLR0911 - one return per TOML type
    """A value written as it would be in the file ("unset" for None)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value) + " }"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


class Kind:
    """How one key's TOML value is read: the TOML types it may have, then `convert`
    (ValueError names the problem); `show` writes a default as the file would."""

    types: ClassVar[tuple[type, ...]] = (str,)

    def convert(self, value: Any) -> Any:
        return value

    def show(self, value: object) -> str:
        return toml(value)


@dataclass(frozen=True)
class Text(Kind):
    """A string; with `pattern`, one it matches whole (`hint` says what it allows)."""

    pattern: re.Pattern[str] | None = None
    hint: str = ""

    def convert(self, value: Any) -> str:
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(f"{value!r}: {self.hint}")
        return str(value)


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few strings."""

    options: tuple[str, ...]

    def convert(self, value: Any) -> str:
        if value not in self.options:
            raise ValueError(f"{value!r}: use {either(self.options)}")
        return str(value)


@dataclass(frozen=True)
class Flag(Kind):
    """true or false."""

    types: ClassVar[tuple[type, ...]] = (bool,)


@dataclass(frozen=True)
class Count(Kind):
    """A whole number in minimum..maximum (`why` says why the bound is there)."""

    types: ClassVar[tuple[type, ...]] = (int,)
    minimum: int = 0
    maximum: int = 1 << 31
    why: str = ""

    def convert(self, value: Any) -> int:
        if not self.minimum <= value <= self.maximum:
            reason = f": {self.why}" if self.why else ""
            raise ValueError(f"{value} is out of range {self.minimum}..{self.maximum}{reason}")
        return int(value)


@dataclass(frozen=True)
class Rate(Kind):
    """Records a second: more than 0, at most a million."""

    types: ClassVar[tuple[type, ...]] = (int, float)
    maximum: ClassVar[float] = 1e6

    def convert(self, value: Any) -> float:
        if not 0 < value <= self.maximum:
            raise ValueError(f"{value} is out of range (0, {self.maximum:.0f}]")
        return float(value)


@dataclass(frozen=True)
class Factor(Kind):
    """A number (whole or not) in minimum..maximum."""

    types: ClassVar[tuple[type, ...]] = (int, float)
    minimum: float = 1.0
    maximum: float = 100.0

    def convert(self, value: Any) -> float:
        if not self.minimum <= value <= self.maximum:  # also rejects nan
            raise ValueError(f"{value} is out of range {self.minimum:g}..{self.maximum:g}")
        return float(value)


@dataclass(frozen=True)
class Duration(Kind):
    """Seconds, written "500ms", "10s", "5m", "4h", "1d", "1h30m" or as a number: at least
    `minimum`, or more than it when not `inclusive` (`why` says why)."""

    types: ClassVar[tuple[type, ...]] = (int, float, str)
    minimum: float = 0.0
    inclusive: bool = True
    why: str = ""

    def convert(self, value: Any) -> float:
        seconds = parse_duration(value)
        if self.inclusive and seconds < self.minimum:
            problem = f"must be at least {format_duration(self.minimum)}"
        elif not self.inclusive and seconds <= self.minimum:
            problem = f"must be more than {self.minimum:g}"
        else:
            return seconds
        raise ValueError(f"{problem} ({self.why})" if self.why else problem)

    def show(self, value: object) -> str:
        return json.dumps(format_duration(value)) if isinstance(value, float) else toml(value)


POSITIVE = Duration(inclusive=False)
TIMEOUT = Duration(inclusive=False, why="0 would fail every attempt")


@dataclass(frozen=True)
class PathValue(Kind):
    """An absolute path without control characters; a socket's fits in sun_path."""

    socket: bool = False

    def convert(self, value: Any) -> Path:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            # A newline would split the hosts.deny line; a NUL cannot be a path at all.
            raise ValueError(f"{value!r} holds a control character")
        size = len(os.fsencode(value))
        if self.socket and size > MAX_SOCKET_PATH:
            raise ValueError(f"{size} bytes; AF_UNIX paths hold at most {MAX_SOCKET_PATH}")
        return Path(value)


@dataclass(frozen=True)
class Strings(Kind):
    """A list of strings, as a tuple."""

    types: ClassVar[tuple[type, ...]] = (list,)

    def convert(self, value: Any) -> tuple[str, ...]:
        if not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(str(v) for v in value)


@dataclass(frozen=True)
class Uids(Kind):
    """A list of user ids."""

    types: ClassVar[tuple[type, ...]] = (list,)

    def convert(self, value: Any) -> tuple[int, ...]:
        uids = tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        if len(uids) != len(value):
            raise ValueError("expected a list of non-negative integers")
        return uids


@dataclass(frozen=True)
class Mode(Kind):
    """A file mode: an integer, or an octal string such as "0666"."""

    types: ClassVar[tuple[type, ...]] = (int, str)

    def convert(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError(f'{value!r}: use an octal string such as "0666"') from None
        if not 0 <= value <= 0o777:
            raise ValueError(f"{value:o} is not a file mode")
        return int(value)

    def show(self, value: object) -> str:
        return json.dumps(f"{value:04o}") if isinstance(value, int) else toml(value)


@dataclass(frozen=True)
class MailAddress(Kind):
    """One mail address (a bare local part is qualified when the mail is sent)."""

    def convert(self, value: Any) -> str:
        return mail_address(value)


@dataclass(frozen=True)
class MailAddresses(Kind):
    """Recipients: at least one mail address."""

    types: ClassVar[tuple[type, ...]] = (list,)

    def convert(self, value: Any) -> tuple[str, ...]:
        values = Strings().convert(value)
        if not values:
            raise ValueError("needs at least one recipient")
        return tuple(mail_address(v) for v in values)


@dataclass(frozen=True)
class Url(Kind):
    """An http(s) URL to POST to."""

    def convert(self, value: Any) -> HttpUrl:
        return HttpUrl.parse(value)

    def show(self, value: object) -> str:
        return json.dumps(str(value))


@dataclass(frozen=True)
class Urls(Kind):
    """A list of http(s) URLs to POST to."""

    types: ClassVar[tuple[type, ...]] = (list,)

    def convert(self, value: Any) -> tuple[HttpUrl, ...]:
        return tuple(HttpUrl.parse(text) for text in Strings().convert(value))

    def show(self, value: object) -> str:
        texts = value if isinstance(value, tuple) else ()
        return "[" + ", ".join(json.dumps(str(text)) for text in texts) + "]"


@dataclass(frozen=True)
class Pairs(Kind):
    """An inline table (name = value, ...), as a tuple of pairs; `check` vets them."""

    types: ClassVar[tuple[type, ...]] = (dict,)

    def convert(self, value: Any) -> tuple[tuple[str, object], ...]:
        return tuple(value.items())

    def show(self, value: object) -> str:
        return "{}" if value == () else toml(value)


@dataclass(frozen=True)
class Setting:
    """What the parser and the man page know of one key, kept in its field's metadata."""

    text: str  # the man page's words
    kind: Kind
    check: Callable[[Any], Any] | None = None  # the kind's value -> the field's; ValueError
    key: str | None = None  # the TOML key, when the field cannot be named so ("from")
    shown: str | None = None  # the default as the page words it, when the value cannot say
    missing: str = ""  # a required key's hint, after "missing; "


@overload
def setting(
    default: T,
    text: str,
    kind: Kind,
    *,
    check: Callable[[Any], Any] | None = None,
    key: str | None = None,
    shown: str | None = None,
) -> T: ...


@overload
def setting(
    *,
    factory: Callable[[], T],
    text: str,
    kind: Kind,
    check: Callable[[Any], Any] | None = None,
    key: str | None = None,
    shown: str | None = None,
) -> T: ...


def setting(
    default: Any = dataclasses.MISSING,
    text: str = "",
    kind: Kind | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    key: str | None = None,
    shown: str | None = None,
) -> Any:
    """A key with a default (or a `factory` making it): a dataclass field."""
    meta = {_SETTING: Setting(text, kind or Kind(), check, key, shown)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def required(
    text: str, kind: Kind, *, missing: str, check: Callable[[Any], Any] | None = None
) -> Any:
    """A key without a default: a table that leaves it out is refused, with `missing`."""
    meta = {_SETTING: Setting(text, kind, check, missing=missing)}
    return dataclasses.field(metadata=meta)


@dataclass(frozen=True)
class Key:
    """One key of a table: its TOML name, its setting and the field that holds it."""

    name: str
    setting: Setting
    field: dataclasses.Field[Any]

    @property
    def required(self) -> bool:
        no_factory = self.field.default_factory is dataclasses.MISSING
        return self.field.default is dataclasses.MISSING and no_factory

    def default_text(self) -> str:
        """The default as the man page shows it."""
        if self.setting.shown is not None:
            return self.setting.shown
        if self.field.default is not dataclasses.MISSING:
            return self.setting.kind.show(self.field.default)
        if self.field.default_factory is not dataclasses.MISSING:
            return self.setting.kind.show(self.field.default_factory())
        return "none: required"

    def parse(self, t: Table) -> Any:
        """The value written in `t` (which holds the key), as the field holds it."""
        value = t.get(self.name, None, self.setting.kind.types)
        try:
            value = self.setting.kind.convert(value)
            return value if self.setting.check is None else self.setting.check(value)
        except ValueError as exc:
            raise t.error(self.name, str(exc)) from None


def keys(cls: type) -> tuple[Key, ...]:
    """The keys of a config dataclass, in the order of its fields."""
    found = []
    for f in dataclasses.fields(cls):
        s = f.metadata.get(_SETTING)
        if isinstance(s, Setting):
            found.append(Key(s.key or f.name, s, f))
    return tuple(found)


def read(t: Table, cls: type[T]) -> T:
    """The dataclass `cls` from table `t`: each key it declares, read and checked in
    field order; absent ones keep their defaults. `t.done()` is the caller's."""
    values: dict[str, Any] = {}
    for key in keys(cls):
        if key.name in t.raw:
            values[key.field.name] = key.parse(t)
        elif key.required:
            raise t.error(key.name, f"missing; {key.setting.missing}")
    return cls(**values)


# Keys that sinks of one sort share, worded once.


def sink_name(default: str) -> str:
    return setting(
        default, "The sink's name in status, routes and logs; unique among the sinks.", Text()
    )


def sink_rate() -> float | None:
    """An event sink's own rate (None: [limits] events_per_second)."""
    return setting(
        None,
        "Records this sink sends per second at most.",
        Rate(),
        shown="[limits] events_per_second",
    )


def mail_from() -> str:
    return setting(
        "wrapalert@localhost",
        "The sender address of each digest.",
        MailAddress(),
        key="from",
    )


def mail_to() -> tuple[str, ...]:
    return setting(
        ("root",),
        "Recipients; a bare local part such as root is qualified with this host's name.",
        MailAddresses(),
    )
