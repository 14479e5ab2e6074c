"""How the daemon logs: structlog set-up, done once by the entry point, and `LogLimit`,
which keeps a flood from turning into a flood of log lines.

Under systemd, stderr is a stream to journald, which stores every line at the
unit's default priority (info) unless the line starts with `<N>`, a syslog
priority (SyslogLevelPrefix=yes, the default). So when stderr is the journal's
stream (systemd names it in JOURNAL_STREAM), each line gets the prefix of its
level, and `journalctl -p err -u wrapalert` finds the errors.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog

from wrapalert.clock import SYSTEM

# structlog's method names -> syslog priorities (sd-daemon(3)).
PRIORITY = {
    "critical": 2,
    "fatal": 2,
    "exception": 3,
    "error": 3,
    "err": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "msg": 6,
    "debug": 7,
}


def journal_stream(stream: TextIO = sys.stderr, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is the journal's: the device:inode systemd put in JOURNAL_STREAM
    (a child that inherited the variable but not the stream does not match)."""
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return bool(expected) and expected == f"{st.st_dev}:{st.st_ino}"


class LevelPrefix:
    """The last processor: `<N>` before the rendered line, N the level's syslog priority."""

    def __call__(self, _logger: object, method_name: str, rendered: Any) -> str:  # noqa: ANN401 - the renderer's output
        return f"<{PRIORITY.get(method_name, 6)}>{rendered}"


def configure(fmt: str = "kv", level: str = "info", *, journal: bool | None = None) -> None:
    """key=value (default; journald adds time and unit) or JSON lines, to stderr; with
    `<N>` priority prefixes when stderr is the journal (`journal`: None detects it)."""
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    processors: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    if journal_stream() if journal is None else journal:
        processors.append(LevelPrefix())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class LogLimit:
    """Allows `per_minute` log lines per key; suppressed lines are counted and reported."""

    def __init__(self, per_minute: int = 10, now: Callable[[], float] = SYSTEM.now) -> None:
        self.per_minute = per_minute
        self.now = now
        self.window: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last one logged)."""
        now = self.now()
        start, count = self.window.get(key, (now, 0))
        if now - start >= 60:
            start, suppressed = now, max(0, count - self.per_minute)
            self.window[key] = (start, 1)
            return True, suppressed
        self.window[key] = (start, count + 1)
        return count < self.per_minute, 0
