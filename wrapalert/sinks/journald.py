"""journald sink: each record as one journal entry over the native protocol.

One datagram per record to `socket` (/run/systemd/journal/socket), fields
``KEY=VALUE\\n``, or ``KEY\\n`` + 64-bit little-endian length + bytes + ``\\n`` for a
value holding a newline. Each entry has:

* MESSAGE: the syslog sink's one-line text (`message_text`: escaped, bounded);
* PRIORITY 4 (warning) for trusted events and held counts, 5 (notice) for
  untrusted events; SYSLOG_FACILITY 10 (authpriv); SYSLOG_IDENTIFIER=wrapalert;
* MESSAGE_ID=e774a4dd995448ef9e0b04a228a15acb, the same for every record, so
  ``journalctl MESSAGE_ID=e774a4dd995448ef9e0b04a228a15acb`` finds them all;
* WRAPALERT_<KEY> for each of the record's keys, raw (binary-safe) but cut
  at 64 KiB: WRAPALERT_TYPE (event or held), WRAPALERT_DAEMON,
  WRAPALERT_CLIENT_ADDR, WRAPALERT_CLIENT_NAME, WRAPALERT_USER,
  WRAPALERT_TRUSTED (true/false), WRAPALERT_UID, ...; a held record has
  WRAPALERT_EVENTS, _FIRST, _LAST, _DAEMONS and _CLIENTS (JSON), _OTHER_DAEMONS,
  _OTHER_CLIENTS and, when its events tell one, _STORY (wrapalert.story.held_story).

An entry too large for a datagram (EMSGSIZE or ENOBUFS) goes as a sealed
memfd passed with SCM_RIGHTS, as sd_journal_send() does. Overload: as for
syslog, MSG_DONTWAIT and an asynchronous wait of at most `timeout` for room
in journald's queue, then TransientSinkError (the batch is retried: at least
once). A missing or stale socket is transient too.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from wrapalert.confkeys import TIMEOUT, PathValue, setting, sink_name, sink_rate
from wrapalert.sinks.registry import EventSinkType
from wrapalert.sinks.syslog import (
    connect_unix,
    message_text,
    send_datagram,
    severity,
    unix_error,
)

MESSAGE_ID = "e774a4dd995448ef9e0b04a228a15acb"
SYSLOG_IDENTIFIER = "wrapalert"
AUTHPRIV = 10
MAX_FIELD = 64 * 1024  # bytes of one WRAPALERT_* value
# journald silently drops any other field name (and those starting with "_": trusted fields).
FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


@dataclass(frozen=True)
class JournaldSinkConfig:
    """A forwarding sink: one journal entry per event, native protocol, WRAPALERT_* fields."""

    name: str = sink_name("journald")
    socket: Path = setting(
        Path("/run/systemd/journal/socket"), "journald's native socket.", PathValue(socket=True)
    )
    timeout: float = setting(5.0, "How long a send may wait for room in journald's queue.", TIMEOUT)
    events_per_second: float | None = sink_rate()


def describe(cfg: JournaldSinkConfig) -> str:
    return f"journald {cfg.socket} (forwarding, one entry per event)"


def entry(record: dict[str, object]) -> bytes:
    """The native-protocol bytes of one record's journal entry."""
    fields: list[tuple[str, str]] = [
        ("MESSAGE", message_text(record)),
        ("PRIORITY", str(severity(record))),
        ("SYSLOG_FACILITY", str(AUTHPRIV)),
        ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
        ("MESSAGE_ID", MESSAGE_ID),
    ]
    for key, value in record.items():
        name = "WRAPALERT_" + key.upper()
        if value is not None and FIELD_NAME.fullmatch(name):
            fields.append((name, field_value(value)))
    out = bytearray()
    for name, text in fields:
        data = text.encode("utf-8", "backslashreplace")[:MAX_FIELD]
        data = data.decode("utf-8", "ignore").encode()  # a cut may split a character
        if b"\n" in data:
            out += b"%s\n%s%s\n" % (name.encode(), struct.pack("<Q", len(data)), data)
        else:
            out += b"%s=%s\n" % (name.encode(), data)
    return bytes(out)


def field_value(value: object) -> str:
    """A record value as a journal field: booleans as true/false, containers as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


class JournaldSink:
    """Forwards records to journald as structured entries."""

    def __init__(self, cfg: JournaldSinkConfig) -> None:
        self.name = cfg.name
        self.socket = str(cfg.socket)
        self.timeout = cfg.timeout
        self.where = f"journald {self.socket}"

    async def send_records(self, records: list[dict[str, object]]) -> None:
        # A socket per batch: nothing to leak on reload; a restarted journald is found.
        try:
            sock = connect_unix(self.socket)
        except OSError as exc:
            raise unix_error(self.where, exc) from exc
        with sock:
            for record in records:
                data = entry(record)
                try:
                    try:
                        await send_datagram(sock, data, stall=self.timeout, where=self.where)
                    except OSError as exc:
                        if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                            raise
                        await self._send_memfd(sock, data)
                except OSError as exc:
                    raise unix_error(self.where, exc) from exc

    async def _send_memfd(self, sock: socket.socket, data: bytes) -> None:
        """Too large for a datagram: the entry in a sealed memfd, passed in an empty one."""
        fd = os.memfd_create("wrapalert-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:  # memory, not disk: this does not block
                view = view[os.write(fd, view) :]
            # journald reads only sealed memfds: we can no longer change what it reads.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())
            await send_datagram(sock, b"", stall=self.timeout, where=self.where, ancdata=[rights])
        finally:
            os.close(fd)


SINK = EventSinkType(
    name="journald",
    config=JournaldSinkConfig,
    describe=describe,
    build=JournaldSink,
)
