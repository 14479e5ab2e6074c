"""The sink interface and its errors.

A sink's `send` either returns (delivered), raises `TransientSinkError`
(retry later with backoff) or `PermanentSinkError` (record it, do not retry
until the configuration changes). Sinks never import the daemon or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from wrapalert.banrule import BanRule
from wrapalert.bantable import Command, KernelTable, Layout
from wrapalert.model import Digest
from wrapalert.notice import Notice
from wrapalert.story import StoryRule


@dataclass(frozen=True)
class DigestLook:
    """What a digest sink renders with, from the config: `[digest] template_dir` and the
    `[story]` thresholds (scans come with the digest, from the detector)."""

    template_dir: Path | None = None
    story: StoryRule = field(default_factory=StoryRule)


@dataclass(frozen=True)
class Capabilities:
    """What the daemon gives a sink, as its descriptor declares (sinks/registry.py): the
    sink set (daemon/sinkset.py) dispatches on this, never on the sink's methods."""

    digests: bool = False  # `send(digest)`: a delivery worker, rate-limited per hour
    records: bool = False  # `send_records(records)`: a forwarder, rate-limited per second
    bans: bool = False  # a BanSink: the ban book carries out its decisions; no events
    scans: bool = False  # with `records`: "scan" records too (pipeline/scan.py)
    # The daemon's notices about the alarm itself (wrapalert/notice.py), past the mail cap:
    # with `digests`, each as a mail of its own (`send_notice`, daemon/notices.py); with
    # `records`, "hook" records (the alarm off or on: WrapalertHookBroken).
    notices: bool = False


DIGESTS = Capabilities(digests=True)
MAIL = Capabilities(digests=True, notices=True)  # the mail sinks: digests and notices
RECORDS = Capabilities(records=True)


@dataclass(frozen=True)
class Built:
    """A sink as built, with what its descriptor says it takes."""

    sink: Sink | EventSink | BanSink
    takes: Capabilities


class SinkError(Exception):
    """A delivery failed."""


class TransientSinkError(SinkError):
    """Worth retrying: refused connection, timeout, 4xx, disconnect."""


class PermanentSinkError(SinkError):
    """Not worth retrying until the config changes: 5xx, bad credentials."""


class Sink(Protocol):
    """A digest sink (mail): takes digests, few and large."""

    name: str

    async def send(self, digest: Digest) -> None: ...


class NoticeSink(Protocol):
    """A digest sink that also takes notices: each one mail, sent at once."""

    name: str

    async def send_notice(self, notice: Notice) -> None: ...


@runtime_checkable
class EventSink(Protocol):
    """A forwarding sink: takes records (one per event, or a "held" summary), many and small."""

    name: str

    async def send_records(self, records: list[dict[str, object]]) -> None: ...


@runtime_checkable
class BanSink(Protocol):
    """A sink that carries ban decisions to a firewall (nftables.py). The daemon gives it
    no events: the ban stage counts them and the ban book (daemon/bans.py) and its kernel
    side (daemon/bankernel.py) call these."""

    name: str
    table: str
    rule: BanRule  # the sink's policy
    layout: Layout  # its table's sets and chain
    reconcile: float  # seconds between comparisons of the kernel with the book

    async def read(self, table: str | None = None) -> KernelTable: ...
    async def transaction(self, commands: list[Command]) -> None: ...
    async def apply(self, add: Mapping[str, float], delete: Iterable[str] = ()) -> None: ...
    async def flush(self) -> None: ...
    async def drop_table(self, table: str) -> None: ...
    async def send_records(self, records: list[dict[str, object]]) -> None: ...


async def close_sink(sink: object) -> None:
    """Let a sink release what it keeps open (a TCP connection), if it has `aclose`;
    called when its worker ends or a reload replaces it. Never raises."""
    aclose = getattr(sink, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing is best effort: the sink is gone anyway
            # structlog here only: every sink imports this module, and parsing a config
            # imports the sinks it names (60 ms of structlog and asyncio for nothing).
            import structlog  # noqa: PLC0415

            log = structlog.get_logger()
            log.warning("sink_close_failed", sink=getattr(sink, "name", "?"), exc_info=True)
