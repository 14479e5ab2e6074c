"""Sinks: where notifications go. One module per sink; wrapalert.sinks.registry collects them.

To add a sink, write one module here (webhook.py is a short example):
1. a frozen config dataclass whose fields are its `[[sink]]` keys, each made by
   wrapalert.confkeys (`sink_name(...)`, `setting(default, text, kind)`, and
   `sink_rate()` if it takes events), 2. `describe(cfg)` for `check-config`, 3. the
   sink class (`send(digest)` or `send_records(records)`, errors from sinks.base), and
4. `SINK = EventSinkType(name="...", config=..., describe=..., build=...)` (or
   `DigestSinkType`, whose `build` also gets the template dir; `check=` for a rule
   across keys); an event sink that takes scan records too, or ban decisions instead
   of records, says so in `takes=` (sinks.base.Capabilities): the daemon dispatches on
   that. Nothing else changes.
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
