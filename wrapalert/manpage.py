"""wrapalert.toml(5), made from the definitions the config parser uses.

Each table's keys come with their text (`KeyDocs` beside the config dataclass:
config.py for the fixed tables, each sink module's `SINK.keys` for its
`[[sink]]` type) and their defaults come from the dataclass the parser fills.
`parser_keys` runs a table's own parser on a recording table to list the keys
it reads; tests/test_manpage.py holds that list equal to the documented one and
the committed page equal to `render()`, so neither can drift.

Regenerate: `python -m wrapalert.manpage > packaging/man/wrapalert.toml.5`
(or `make man`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wrapalert import config
from wrapalert.confparse import ConfigError, Key, KeyDocs, Table
from wrapalert.sinks import registry

VERSION = "0.1.0"
DATE = "2026-12-04"  # of the page's last change in substance (not of each build)
# Floats are durations, except these rates (per second).
RATES = frozenset({"events_per_second"})


@dataclasses.dataclass(frozen=True)
class Section:
    """One table of the file: its heading, the dataclass its parser fills, its keys."""

    heading: str
    intro: str
    dataclass: type
    keys: KeyDocs
    parse: Callable[[Table], object]


class _Locator:
    def error(self, table: str, _index: int | None, key: str, problem: str) -> ConfigError:
        return ConfigError(f"[{table}] {key}: {problem}")


class _Recording(dict[str, Any]):
    """A table that holds only the examples it is given and notes every key asked about."""

    def __init__(self, examples: dict[str, object]) -> None:
        super().__init__(examples)
        self.asked: list[str] = []

    def __contains__(self, key: object) -> bool:
        self.asked.append(str(key))
        return super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:  # noqa: ANN401 - a dict's own signature
        self.asked.append(key)
        return super().get(key, default)


def parser_keys(section: Section) -> set[str]:
    """Every key `section`'s parser reads: on an empty table, then with the example of
    each documented key it did not read (a key read only when given, or after another)."""
    examples = {
        name: doc.example
        for name, doc in section.keys.items()
        if isinstance(doc, Key) and doc.example is not None
    }
    found: set[str] = set()
    for given in [{}, *({name: value} for name, value in examples.items())]:
        raw = _Recording(given)
        # An example alone may not satisfy the parser: what it read still counts.
        with contextlib.suppress(ConfigError):
            section.parse(Table(_Locator(), "probe", None, raw))
        found.update(raw.asked)
    return found


def sections() -> list[Section]:
    """The tables in the order the page lists them."""
    parser = config._Parser("", "<manpage>")  # noqa: SLF001 - the same parser, table by table
    p = parser
    out = [
        Section("[daemon]", "The daemon's sockets, directories and trust.",
                config.DaemonConfig, config.DAEMON_KEYS, p._daemon),  # noqa: SLF001
        Section("[digest]", "How events are grouped into digests, and when they are sent.",
                config.DigestConfig, config.DIGEST_KEYS, p._digest),  # noqa: SLF001
        Section("[limits]", "Caps and backoff.",
                config.LimitsConfig, config.LIMITS_KEYS, p._limits),  # noqa: SLF001
        Section("[scan]", "The scan detector.",
                config.ScanConfig, config.SCAN_KEYS, p._scan),  # noqa: SLF001
        Section("[ignore]", "Events counted in status but never notified.",
                config.IgnoreConfig, config.IGNORE_KEYS, p._ignore),  # noqa: SLF001
        Section("[[route]]", ROUTES, config.RouteConfig, config.ROUTE_KEYS,
                lambda t: p._route(t.raw, 0, {"smtp"})),  # noqa: SLF001
        Section("[metrics]", "Prometheus metrics for node_exporter's textfile collector.",
                config.MetricsConfig, config.METRICS_KEYS, p._metrics),  # noqa: SLF001
    ]  # fmt: skip
    for sink in registry.all_types():
        kind = "digests (mail)" if sink.kind == "digest" else "one record per event"
        about = " ".join((sink.config.__doc__ or "").replace("`", "").split())
        intro = f"{about} It takes {kind}."
        heading = f'[[sink]] type = "{sink.name}"'
        out.append(Section(heading, intro, sink.config, sink.keys, sink.parse))
    return out


def default_text(section: Section, name: str, doc: str | Key) -> str:
    """The default as the page shows it: the Key's own words, else the field's default
    written as TOML."""
    if isinstance(doc, Key) and doc.default is not None:
        return doc.default
    field_name = doc.field if isinstance(doc, Key) and doc.field else name
    by_name = {f.name: f for f in dataclasses.fields(section.dataclass)}
    field = by_name[field_name]
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "none: required"
    return toml(value, duration=name not in RATES)


def toml(value: object, *, duration: bool) -> str:  # noqa: PLR0911 - one return per TOML type
    """A default value written as it would be in the file."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and duration:
        return json.dumps(_duration(value))
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value) + " }"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v, duration=duration) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _duration(seconds: float) -> str:
    """10.0 -> "10s", 300.0 -> "5m", 0.1 -> "100ms": the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def roff(text: str) -> str:
    """Plain text for a roff line: backslashes and hyphens escaped, no leading dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _page() -> Iterator[str]:
    yield f'.TH WRAPALERT.TOML 5 "{DATE}" "wrapalert {VERSION}" "File Formats"'
    yield '.\\" Generated by wrapalert/manpage.py from the config definitions: do not edit.'
    yield ".SH NAME"
    yield "wrapalert.toml \\- configuration of the wrapalert daemon"
    yield ".SH SYNOPSIS"
    yield ".I /etc/wrapalert/wrapalert.toml"
    yield ".SH DESCRIPTION"
    yield roff(
        "A TOML file read by wrapalert run, wrapalert check-config and the other commands "
        "(each takes -c FILE for another file). A missing file means the built-in defaults; "
        "a bad file is an error that names the file, the line and the key, and a reload "
        "with a bad file keeps the running configuration. Unknown tables and keys are errors."
    )
    yield ".PP"
    yield roff(
        'Durations are written "500ms", "10s", "5m", "4h", "1d", "1h30m", or as a number '
        "of seconds. Every key is optional unless it says it is required; each is listed "
        "with its default."
    )
    sinks = False
    for section in sections():
        if section.heading.startswith("[[sink]]"):
            if not sinks:
                yield ".SH [[sink]]"
                yield roff(SINKS)
                sinks = True
            yield '.SS "' + roff(section.heading).replace('"', "\\(dq") + '"'
        else:
            yield f".SH {roff(section.heading)}"
        yield roff(section.intro)
        for name, doc in section.keys.items():
            text = doc.text if isinstance(doc, Key) else doc
            yield ".TP"
            yield f".B {roff(name)}"
            yield roff(f"{text} Default: {default_text(section, name, doc)}.")
    yield ".SH EXAMPLE"
    yield ".nf"
    for line in EXAMPLE.splitlines():
        yield roff(line) if line else ".sp"
    yield ".fi"
    yield ".SH FILES"
    yield ".TP"
    yield ".I /etc/wrapalert/wrapalert.toml"
    yield "The configuration."
    yield ".TP"
    yield ".I /usr/share/doc/wrapalert/examples/"
    yield roff("An Alertmanager configuration for a fleet and Prometheus alert rules.")
    yield ".SH SEE ALSO"
    yield ".BR wrapalert (8),"
    yield ".BR hosts_access (5)"


ROUTES = (
    "Routes, tried in order: the first whose matchers all match a new group sets its "
    "severity and its sinks."
)
SINKS = (
    "Where digests and events go: one table per sink, any number of each type. Every "
    "table needs type (one of the types below); name defaults to the type and must be "
    "unique. Without any [[sink]] table, digests go by SMTP to root on localhost. "
    "Digest sinks are capped by [limits] mails_per_hour, forwarding sinks by "
    "events_per_second."
)

EXAMPLE = """\
[daemon]
hostname = "web1"

[digest]
group_wait = "30s"

[[sink]]
type = "smtp"
to = ["root@example.org"]

[[sink]]
type = "alertmanager"
urls = ["http://am1.example:9093", "http://am2.example:9093"]

[metrics]
textfile = "/var/lib/prometheus/node-exporter/wrapalert.prom"
"""


def render() -> str:
    """The whole page."""
    return "\n".join(_page()) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
