"""The sink types: every module in wrapalert/sinks with a module-level `SINK`.

A sink module declares, in one `SINK = DigestSinkType(...)` or
`SINK = EventSinkType(...)`, its `type = "..."` name, its frozen config
dataclass (whose fields are its `[[sink]]` keys: wrapalert/confkeys.py), its
line in `check-config`, how to build it and what it takes (`takes`: digests;
records, and "scan" records among them; or ban decisions), which is all the
daemon dispatches on. A look-up imports the module named like the type (or the
config's own module) and, when that does not declare it, every module of this
package once; `register` adds a type from elsewhere (a test module). So a
config naming only smtp imports only the smtp sink.

config.py asks `get(type name)` while parsing; the daemon asks `built(cfg)`
and `events_per_second(cfg)`; check-config asks `describe(cfg)`
and preview `of(cfg).mail`.

Nothing here imports a sink module before a look-up, and the sink modules
import jinja2 and aiosmtplib only to build or send: parsing stays light.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from wrapalert.confparse import EventSinkConfig, SinkConfig, Table
from wrapalert.sinks.base import DIGESTS, RECORDS, Built, Capabilities, DigestLook

if TYPE_CHECKING:
    from wrapalert.sinks.base import EventSink, Sink

C = TypeVar("C", bound=SinkConfig)
E = TypeVar("E", bound=EventSinkConfig)


@dataclass(frozen=True)
class DigestSinkType(Generic[C]):
    """A sink that takes digests (mail: few and large), rate-limited by mails_per_hour."""

    kind: ClassVar[Literal["digest"]] = "digest"
    name: str  # the `type = "..."` of its [[sink]] tables
    config: type[C]  # a frozen dataclass with a `name`; its keys are the table's
    describe: Callable[[C], str]  # check-config's text after "sink NAME: "
    build: Callable[[C, DigestLook], Sink]  # (config, [digest] template_dir and [story])
    # Sender and recipients of its mail, which `preview` renders; None: it sends no mail.
    mail: Callable[[C], tuple[str, tuple[str, ...]]] | None = None
    # A check across its table's keys, once each is read (a ConfigError from `t.error`).
    check: Callable[[Table, C], None] | None = None
    # Digests; with `notices`, the daemon's notices too (`send_notice`: sinks/base.MAIL).
    takes: Capabilities = DIGESTS

    def events_per_second(self, _cfg: C) -> float | None:
        return None  # digests are capped per hour, by [limits] mails_per_hour


@dataclass(frozen=True)
class EventSinkType(Generic[E]):
    """A sink that takes records (one per event, or a "held" summary), rate-limited per second."""

    kind: ClassVar[Literal["event"]] = "event"
    name: str
    config: type[E]  # has `events_per_second: float | None` (confkeys.sink_rate)
    describe: Callable[[E], str]
    build: Callable[[E], EventSink]
    mail: ClassVar[None] = None
    # How to build it for a host named by [daemon] hostname, if what it sends names the
    # host (alert labels, a payload field); None: `build`, which needs no name.
    build_for_host: Callable[[E, str], EventSink] | None = None
    check: Callable[[Table, E], None] | None = None  # as for DigestSinkType
    # Records (one per event); with `scans`, "scan" records too; or, with `bans` alone,
    # no events at all: a BanSink (sinks/base.py) the ban book calls.
    takes: Capabilities = RECORDS

    def events_per_second(self, cfg: E) -> float | None:
        """The table's own rate; None means [limits] events_per_second."""
        return cfg.events_per_second


SinkType = DigestSinkType[Any] | EventSinkType[Any]

_PACKAGE = __name__.rpartition(".")[0]  # wrapalert.sinks
_by_name: dict[str, SinkType] = {}
_by_config: dict[type, SinkType] = {}
_discovered = False


def register(descriptor: SinkType) -> SinkType:
    """Add a sink type; its name and its config class must be new. Returns it."""
    _discover()
    return _add(descriptor)


def unregister(name: str) -> None:
    """Remove a sink type added with `register` (a test cleaning up after itself)."""
    descriptor = _by_name.pop(name)
    del _by_config[descriptor.config]


def get(name: str) -> SinkType | None:
    """The sink type called `name` in `type = "..."`, or None."""
    if name not in _by_name and name.isidentifier():
        _load(f"{_PACKAGE}.{name}")  # usually it is named after its module: import just that
    if name not in _by_name:
        _discover()
    return _by_name.get(name)


def of(cfg: SinkConfig) -> SinkType:
    """The sink type a config object belongs to (TypeError for one no sink declares)."""
    if type(cfg) not in _by_config:
        _load(type(cfg).__module__)  # usually its own module declares it
    if type(cfg) not in _by_config:
        _discover()
    try:
        return _by_config[type(cfg)]
    except KeyError:
        raise TypeError(f"no sink type for {type(cfg).__name__}") from None


def all_types() -> tuple[SinkType, ...]:
    """Every sink type, by name."""
    _discover()
    return tuple(_by_name[name] for name in sorted(_by_name))


def known() -> str:
    """The type names as an error message offers them: '"a", "b" or "c"'."""
    names = [f'"{d.name}"' for d in all_types()]
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def build(
    cfg: SinkConfig, look: DigestLook | None = None, *, host: str | None = None
) -> Sink | EventSink:
    """The sink for one `[[sink]]` table: a digest sink or an event (forwarding) sink.
    `host`: the name it gives this host (None: the system's); digests carry their own."""
    descriptor = of(cfg)
    if isinstance(descriptor, EventSinkType):
        if host is not None and descriptor.build_for_host is not None:
            return descriptor.build_for_host(cfg, host)
        return descriptor.build(cfg)
    return descriptor.build(cfg, look or DigestLook())


def built(cfg: SinkConfig, look: DigestLook | None = None, *, host: str | None = None) -> Built:
    """The sink for one `[[sink]]` table, with what its descriptor says it takes."""
    return Built(build(cfg, look, host=host), of(cfg).takes)


def events_per_second(cfg: SinkConfig) -> float | None:
    """An event sink's own rate; None for [limits] events_per_second (and for digest sinks)."""
    return of(cfg).events_per_second(cfg)


def describe(cfg: SinkConfig) -> str:
    """The sink as `check-config` lists it (after "sink NAME: ")."""
    return of(cfg).describe(cfg)


def _add(descriptor: SinkType) -> SinkType:
    if _by_name.get(descriptor.name) is descriptor:
        return descriptor  # found once by name, once by discovery
    if descriptor.name in _by_name:
        raise ValueError(f"sink type {descriptor.name!r} is declared twice")
    if descriptor.config in _by_config:
        raise ValueError(f"{descriptor.config.__name__} belongs to two sink types")
    _by_name[descriptor.name] = descriptor
    _by_config[descriptor.config] = descriptor
    return descriptor


def _load(module_name: str) -> None:
    """Register the SINK of one module of this package, if it exists and has one."""
    if not module_name.startswith(f"{_PACKAGE}.") or find_spec(module_name) is None:
        return
    descriptor = getattr(importlib.import_module(module_name), "SINK", None)
    if isinstance(descriptor, DigestSinkType | EventSinkType):
        _add(descriptor)


def _discover() -> None:
    """Import every module of this package once and register its `SINK`, if it has one."""
    global _discovered  # noqa: PLW0603 - one process-wide registry, filled once
    if _discovered:
        return
    found = []
    for info in pkgutil.iter_modules(importlib.import_module(_PACKAGE).__path__):
        descriptor = getattr(importlib.import_module(f"{_PACKAGE}.{info.name}"), "SINK", None)
        if isinstance(descriptor, DigestSinkType | EventSinkType):
            found.append(descriptor)
    # Only once every module imported: a failed import leaves nothing half registered.
    _discovered = True
    for descriptor in found:
        _add(descriptor)
