"""The sink interface and its errors.

A sink's `send` either returns (delivered), raises `TransientSinkError`
(retry later with backoff) or `PermanentSinkError` (record it, do not retry
until the configuration changes). Sinks never import the daemon or the CLI.
"""

from __future__ import annotations

from typing import Protocol

from wrapalert.model import Digest


class SinkError(Exception):
    """A delivery failed."""


class TransientSinkError(SinkError):
    """Worth retrying: refused connection, timeout, 4xx, disconnect."""


class PermanentSinkError(SinkError):
    """Not worth retrying until the config changes: 5xx, bad credentials."""


class Sink(Protocol):
    """Anything that can deliver a digest."""

    name: str

    async def send(self, digest: Digest) -> None: ...
