"""The sink interface and its errors.

A sink's `send` either returns (delivered), raises `TransientSinkError`
(retry later with backoff) or `PermanentSinkError` (record it, do not retry
until the configuration changes). Sinks never import the daemon or the CLI.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from wrapalert.model import Digest


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


@runtime_checkable
class EventSink(Protocol):
    """A forwarding sink: takes records (one per event, or a "held" summary), many and small."""

    name: str

    async def send_records(self, records: list[dict[str, object]]) -> None: ...
