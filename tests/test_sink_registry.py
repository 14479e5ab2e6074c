"""The sink registry: every sink module is found, and a sink from elsewhere plugs in whole."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from helpers import report_through_daemon, write_config

import wrapalert.sinks
from wrapalert import config
from wrapalert.confkeys import Text, setting, sink_name, sink_rate
from wrapalert.confparse import ConfigError
from wrapalert.daemon.server import Server
from wrapalert.model import Digest
from wrapalert.sinks import registry
from wrapalert.sinks.registry import DigestSinkType, EventSinkType

SHIPPED = {
    "alertmanager",
    "journald",
    "jsonl",
    "maildir",
    "sendmail",
    "smtp",
    "syslog",
    "webhook",
}


def sink_modules() -> list[ModuleType]:
    """Every module of wrapalert/sinks that declares a SINK."""
    modules = (
        importlib.import_module(f"wrapalert.sinks.{info.name}")
        for info in pkgutil.iter_modules(wrapalert.sinks.__path__)
    )
    return [m for m in modules if hasattr(m, "SINK")]


def test_every_sink_module_is_registered() -> None:
    """Each module in wrapalert/sinks with a SINK is what the registry returns for its name."""
    modules = sink_modules()
    assert {m.SINK.name for m in modules} >= SHIPPED
    for module in modules:
        assert registry.get(module.SINK.name) is module.SINK
        assert module.SINK in registry.all_types()


def test_type_names_and_config_classes_are_unique() -> None:
    """No two sink modules declare the same type name or the same config class."""
    declared = [m.SINK for m in sink_modules()]
    assert len({d.name for d in declared}) == len(declared)
    assert len({d.config for d in declared}) == len(declared)


def test_registering_a_taken_name_is_refused() -> None:
    """register() refuses a second sink type under a name already taken."""
    smtp = registry.get("smtp")
    assert smtp is not None
    twin = DigestSinkType(
        name="smtp",
        config=ListDigestConfig,
        describe=lambda _c: "",
        build=lambda _c, _d: ListDigestSink(ListDigestConfig(), []),
    )
    with pytest.raises(ValueError, match="'smtp' is declared twice"):
        registry.register(twin)
    assert registry.get("smtp") is smtp


def test_unknown_type_names_every_known_one() -> None:
    """A [[sink]] of an unknown type is refused with every registered type name offered."""
    with pytest.raises(ConfigError, match="unknown sink type 'pigeon'") as raised:
        config.loads('[[sink]]\ntype = "pigeon"\n')
    for descriptor in registry.all_types():
        assert f'"{descriptor.name}"' in str(raised.value)


def test_kinds_follow_what_each_sink_takes() -> None:
    """Mail sinks take digests; the forwarding sinks take records, each with its own rate."""
    kinds = {d.name: d.kind for d in registry.all_types() if d.name in SHIPPED}
    assert kinds == {
        **dict.fromkeys(("smtp", "sendmail", "maildir"), "digest"),
        **dict.fromkeys(("syslog", "journald", "jsonl", "alertmanager", "webhook"), "event"),
    }


# A throwaway sink pair, declared here and nowhere else: what a new sink module would hold.


@dataclass(frozen=True)
class ListEventConfig:
    name: str = sink_name("records")
    label: str = setting("", "Written into every record.", Text())
    events_per_second: float | None = sink_rate()


@dataclass
class ListEventSink:
    """Appends every record it is sent to a list."""

    cfg: ListEventConfig
    records: list[dict[str, object]]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.cfg.name

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.records.extend({**r, "label": self.cfg.label} for r in records)


@dataclass(frozen=True)
class ListDigestConfig:
    name: str = sink_name("digests")


@dataclass
class ListDigestSink:
    """Appends every digest it is sent to a list."""

    cfg: ListDigestConfig
    digests: list[Digest]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.cfg.name

    async def send(self, digest: Digest) -> None:
        self.digests.append(digest)


@dataclass
class Received:
    records: list[dict[str, object]] = field(default_factory=list)
    digests: list[Digest] = field(default_factory=list)


@pytest.fixture
def list_sinks() -> Iterator[Received]:
    """Registers the "test-records" and "test-digests" sink types for one test, then drops them."""
    received = Received()
    registry.register(
        EventSinkType(
            name="test-records",
            config=ListEventConfig,
            describe=lambda cfg: f"a list labelled {cfg.label}",
            build=lambda cfg: ListEventSink(cfg, received.records),
        )
    )
    try:
        registry.register(
            DigestSinkType(
                name="test-digests",
                config=ListDigestConfig,
                describe=lambda _cfg: "a list of digests",
                build=lambda cfg, _template_dir: ListDigestSink(cfg, received.digests),
            )
        )
        try:
            yield received
        finally:
            registry.unregister("test-digests")
    finally:
        registry.unregister("test-records")
    assert registry.get("test-records") is None


SINKS = """
[[sink]]
type = "test-records"
label = "from-toml"
events_per_second = 50

[[sink]]
type = "test-digests"
"""


def test_a_sink_from_a_test_module_runs_end_to_end(sockdir: Path, list_sinks: Received) -> None:
    """Sink types registered from this module, configured in TOML, get the daemon's events."""
    cfg = config.load(write_config(sockdir, sinks=SINKS))
    report_through_daemon(cfg, ("192.0.2.1", "192.0.2.2"))
    events = [r for r in list_sinks.records if r["type"] == "event"]
    assert [r["client_addr"] for r in events] == ["192.0.2.1", "192.0.2.2"]
    assert all(r["label"] == "from-toml" and r["daemon"] == "sshd" for r in events)
    assert sum(d.events for d in list_sinks.digests) == 2


def test_a_registered_sink_is_described_and_rated_by_its_descriptor(
    sockdir: Path, list_sinks: Received
) -> None:
    """check-config's line and the forwarding rate of a registered sink come from its table."""
    cfg = config.load(write_config(sockdir, sinks=SINKS))
    records, digests = cfg.sinks
    assert registry.describe(records) == "a list labelled from-toml"
    assert registry.describe(digests) == "a list of digests"
    assert registry.events_per_second(records) == 50.0
    assert registry.events_per_second(digests) is None
    assert Server(cfg).runtime.sinks.forwarders["records"].bucket.rate == 50.0
    assert list_sinks.records == []


def test_unknown_key_in_a_registered_sinks_table_is_refused(
    sockdir: Path, list_sinks: Received
) -> None:
    """The registry, not the sink's module, refuses keys its config class does not declare."""
    path = write_config(
        sockdir, sinks='[[sink]]\ntype = "test-records"\ncolour = "red"\n', digests=False
    )
    with pytest.raises(ConfigError, match=r"\[\[sink\]\] #1 colour: unknown key"):
        config.load(path)
    assert list_sinks.records == []
