"""Sinks: where notifications go. One module per sink; wrapalert.sinks.registry collects them.

To add a sink, write one module here (webhook.py is a short example):
1. a frozen config dataclass with a `name` (and `events_per_second: float | None`
   if it takes events), 2. `parse(t: Table)` reading its `[[sink]]` keys with the
   wrapalert.confparse getters, 3. `describe(cfg)` for `check-config`, 4. the sink
   class (`send(digest)` or `send_records(records)`, errors from sinks.base), and
5. `SINK = EventSinkType(name="...", config=..., parse=..., describe=..., build=...)`
   (or `DigestSinkType`, whose `build` also gets the template dir); an event sink that
   takes scan records too, or ban decisions instead of records, says so in `takes=`
   (sinks.base.Capabilities): the daemon dispatches on that. Nothing else changes.
"""

from __future__ import annotations

from wrapalert.sinks.base import (
    EventSink,
    PermanentSinkError,
    Sink,
    SinkError,
    TransientSinkError,
)
from wrapalert.sinks.registry import build, events_per_second

__all__ = [
    "EventSink",
    "PermanentSinkError",
    "Sink",
    "SinkError",
    "TransientSinkError",
    "build",
    "events_per_second",
]
