"""jsonl sink: one JSON object per line, appended to a file, for log shippers.

Appends are whole lines written with one write() to an O_APPEND file, so a
shipper tailing the file never sees half a record; the file is opened
without following symlinks and created 0640.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

from wrapalert.confkeys import PathValue, setting, sink_name, sink_rate
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import EventSinkType


@dataclass(frozen=True)
class JsonlSinkConfig:
    """A forwarding sink: one JSON object per event, appended to a file for log shippers."""

    name: str = sink_name("jsonl")
    path: Path = setting(
        Path("/var/log/wrapalert/events.jsonl"),
        "The file one JSON object per event is appended to "
        "(rotated by /etc/logrotate.d/wrapalert).",
        PathValue(),
    )
    events_per_second: float | None = sink_rate()


def describe(cfg: JsonlSinkConfig) -> str:
    return f"jsonl {cfg.path} (forwarding, one record per event)"


class JsonlSink:
    """Appends records to `path`; the directory is created if missing."""

    def __init__(self, cfg: JsonlSinkConfig) -> None:
        self.name = cfg.name
        self.path = cfg.path

    async def send_records(self, records: list[dict[str, object]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        await asyncio.to_thread(self.append, data)

    def append(self, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o640)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise PermanentSinkError(f"jsonl {self.path}: {exc}") from exc
        except OSError as exc:  # ELOOP (a symlink), EACCES, ENOSPC: may be fixed by hand
            raise TransientSinkError(f"jsonl {self.path}: {exc}") from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise TransientSinkError(f"jsonl {self.path}: {exc}") from exc
        finally:
            os.close(fd)


SINK = EventSinkType(name="jsonl", config=JsonlSinkConfig, describe=describe, build=JsonlSink)
