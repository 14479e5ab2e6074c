"""syslog sink: one line per record, RFC 3164 to the local socket or RFC 5424 to a collector.

Locally (`socket`, default /dev/log) each record is one AF_UNIX datagram
``<PRI>Mmm dd hh:mm:ss ident[pid]: TEXT``, the form rsyslog and journald both
parse (an RFC 5424 line sent there is mangled). To a collector (`address`) it
is RFC 5424 without structured data: one UDP datagram per record, or
octet-counted frames (RFC 6587) on one TCP connection, reopened after an error.

TEXT (`message_text`, also journald's MESSAGE) is one grep-friendly line:

    refused verdict=deny trusted=true uid=0 daemon=sshd client_addr=203.0.113.5 ... host=web1
    held events=90 story="brute force from 203.0.113.5 on sshd (90 tries)" first=1714564800.5 ...

Every value is hostile. Anything but printable ASCII is escaped as Python's
``unicode_escape`` writes it (``\\n``, ``\\x1b``, ``\\xe9``, ``\\u2028``), ``\\`` and
``"`` are backslash-escaped, a value holding a space, ``=``, ``"`` or ``\\`` (or
empty) is double-quoted, a value is cut at 256 characters (ending in ``...``)
and the line at 2048 bytes (ending in ``truncated=true``): no CR, LF, NUL or
other control character can reach a receiver, so no record can forge a
second line.

Overload: nothing here blocks the event loop. Datagrams go out with
MSG_DONTWAIT; when the receiver's queue is full the sink waits for room
asynchronously, at most `timeout`, then raises TransientSinkError and the
ForwardWorker retries the batch (records already sent go again: at least
once). A TCP connect, and each 64 KiB written, gets the same `timeout`. TCP
gives no receipt: a record written just before the collector dies can be
lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import re
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wrapalert.clock import SYSTEM
from wrapalert.confkeys import (
    TIMEOUT,
    Choice,
    PathValue,
    Text,
    setting,
    sink_name,
    sink_rate,
)
from wrapalert.confparse import Table, resolvable_name
from wrapalert.sinks.base import PermanentSinkError, SinkError, TransientSinkError
from wrapalert.sinks.registry import EventSinkType

# Syslog facility codes (RFC 5424 table 1) a sender may use; kern (0) is the kernel's own.
SYSLOG_FACILITIES = {
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
SYSLOG_PROTOCOLS = ("udp", "tcp")
# RFC 3164 TAG (RFC 5424 APP-NAME allows more): what every receiver parses alike.
SYSLOG_IDENT = re.compile(r"[A-Za-z0-9._-]{1,32}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")  # or an IPv4 address


def _address(text: str) -> tuple[str, int]:
    """A collector: "host:port" or "[IPv6]:port" (514 is only a convention: no default)."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: [{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f'{text!r}: write IPv6 in brackets, e.g. "[2001:db8::1]:514"')
    elif not _HOST_NAME.fullmatch(host) or not resolvable_name(host):
        host = ""
    if not colon or not host or not re.fullmatch(r"[0-9]{1,5}", port):
        raise ValueError(f'{text!r}: use "host:port", e.g. "collector.example:514"')
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {int(port)} is out of range 1..65535")
    return host, int(port)


@dataclass(frozen=True)
class SyslogSinkConfig:
    """A forwarding sink: one syslog line per event, RFC 3164 to the local socket or
    RFC 5424 over UDP or TCP to a collector (`address`)."""

    name: str = sink_name("syslog")
    socket: Path = setting(
        Path("/dev/log"), "The local syslog socket (RFC 3164 lines).", PathValue(socket=True)
    )
    address: tuple[str, int] | None = setting(
        None,
        "A collector as host:port or [IPv6]:port instead of the local socket (RFC 5424 lines).",
        Text(),
        check=_address,
        shown="unset: the local socket",
    )
    protocol: str = setting("udp", "udp or tcp, with address.", Choice(SYSLOG_PROTOCOLS))
    facility: str = setting("authpriv", "The syslog facility.", Choice(tuple(SYSLOG_FACILITIES)))
    ident: str = setting(
        "wrapalert",
        "The syslog tag (ident).",
        Text(SYSLOG_IDENT, 'use 1 to 32 letters, digits, ".", "_" or "-"'),
    )
    # How long a send may wait: for room in a full local queue, or to connect and write.
    timeout: float = setting(5.0, "How long a send to a collector may take.", TIMEOUT)
    events_per_second: float | None = sink_rate()


def _check(t: Table, cfg: SyslogSinkConfig) -> None:
    """The local socket or a collector: what is written must say which."""
    if cfg.address is not None and "socket" in t.raw:
        raise t.error("address", "use socket (local) or address (a collector), not both")
    if cfg.address is None and "protocol" in t.raw:
        raise t.error("protocol", "only with address (the local socket takes datagrams)")


def describe(cfg: SyslogSinkConfig) -> str:
    where = str(cfg.socket)
    if cfg.address is not None:
        where = f"{cfg.protocol}://{cfg.address[0]}:{cfg.address[1]}"
    return f"syslog {where} facility {cfg.facility} (forwarding, one line per event)"


WARNING, NOTICE = 4, 5
MAX_VALUE = 256  # characters of one escaped value; libwrap's longest expansion is 255
MAX_TEXT = 2048  # bytes of TEXT: RFC 5426 receivers must take 2048-byte UDP messages
_TRUNCATED = " truncated=true"
TCP_CHUNK = 64 * 1024  # bytes written before waiting for the collector to take them
KEEPALIVE_FLOOR = 60.0  # seconds sent bytes may stay unacknowledged, at least
# The record's own keys, most useful first; a record's other keys follow, sorted.
# verdict, trusted and uid lead: long values from a local user cut the line's tail,
# and must never cut off that the report is untrusted.
EVENT_ORDER = (
    "verdict",
    "trusted",
    "uid",
    "transport",
    "daemon",
    "client_addr",
    "client_name",
    "user",
    "client",
    "client_host",
    "client_port",
    "server",
    "server_addr",
    "daemon_pid",
    "host",
    "time",
    "received",
)
# trusted first, as for events: a long line loses its tail, never whose count it is.
HELD_ORDER = (
    "trusted",
    "events",
    "unverified",
    "story",
    "first",
    "last",
    "daemons",
    "untrusted_daemons",
    "other_daemons",
)
_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"\\", '"'}
_QUOTE = frozenset(' "=\\')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def message_text(record: dict[str, object]) -> str:
    """The one-line key=value text for a record: ASCII, no control characters, bounded."""
    word = record_word(record)
    order = HELD_ORDER if word == "held" else EVENT_ORDER
    keys = [k for k in order if k in record]
    keys += sorted(k for k in record if k not in order and k != "type")
    line = word
    for key in keys:
        if not _KEY.fullmatch(key):
            continue  # our own keys always match; anything else has no safe name here
        part = f" {key}={format_value(record[key])}"
        if len(line) + len(part) > MAX_TEXT - len(_TRUNCATED):
            return line + _TRUNCATED
        line += part
    return line


def record_word(record: dict[str, object]) -> str:
    """First word of the text and the RFC 5424 MSGID: held, allowed or refused."""
    if record.get("type") == "held":
        return "held"
    return "allowed" if record.get("verdict") == "allow" else "refused"


def severity(record: dict[str, object]) -> int:
    """warning for trusted events (and held counts, which may hold them), notice for untrusted."""
    return NOTICE if record.get("trusted") is False else WARNING


def format_value(value: object) -> str:
    """One value for the text: escaped, capped, quoted when it holds a space, = or quote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list | tuple):
        # "name:count,..." or "a,b": items escape their own , and : so the list stays parseable.
        if isinstance(value, dict):
            text = ",".join(f"{_item(k)}:{_item(n)}" for k, n in value.items())
        else:
            text = ",".join(_item(v) for v in value)
        if len(text) > MAX_VALUE:  # whole items only, so no escape is cut in half
            cut = text.rfind(",", 0, MAX_VALUE - 2)
            text = (text[:cut] if cut > 0 else "") + "..."
    else:
        text = escape(str(value))
    if not text or any(c in _QUOTE for c in text):
        return f'"{text}"'
    return text


def _item(value: object) -> str:
    """One item of a list or dict value."""
    scalar = value is None or isinstance(value, bool | int | float)
    return escape(format_value(value) if scalar else str(value), ",:")


def escape(text: str, extra: str = "") -> str:
    """Printable ASCII as is (less `extra`), everything else backslash-escaped; at most
    MAX_VALUE characters, never cutting an escape in half."""
    out: list[str] = []
    size = 0
    for ch in text[: MAX_VALUE + 1]:  # bounded work, whatever the input's length
        if ch in extra:
            piece = f"\\x{ord(ch):02x}"
        elif ch in _PLAIN:
            piece = ch
        elif ch in '\\"':
            piece = "\\" + ch
        else:
            piece = ch.encode("unicode_escape").decode("ascii")
        if size + len(piece) > MAX_VALUE:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def record_time(record: dict[str, object]) -> float:
    """When the record happened: an event's receipt, a held count's last event, else now."""
    stamp = record.get("last" if record.get("type") == "held" else "received")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and 0 < stamp < 1e11:
        return float(stamp)
    return SYSTEM.now()


def rfc3164(record: dict[str, object], facility: int, ident: str, pid: int) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss ident[pid]: TEXT``, local time, as glibc's syslog() writes it."""
    tm = time.localtime(record_time(record))
    stamp = (
        f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )
    pri = facility * 8 + severity(record)
    return f"<{pri}>{stamp} {ident}[{pid}]: {message_text(record)}".encode()


def rfc5424(record: dict[str, object], facility: int, ident: str, pid: int, host: str) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - TEXT``; TEXT is ASCII, so no BOM."""
    stamp = datetime.fromtimestamp(record_time(record), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pri = facility * 8 + severity(record)
    head = f"<{pri}>1 {stamp} {host} {ident} {pid} {record_word(record)} -"
    return f"{head} {message_text(record)}".encode()


def this_host() -> str:
    """RFC 5424 HOSTNAME: this host's name if it is printable ASCII (255 at most), else "-"."""
    name = socket.gethostname()
    if name and len(name) <= 255 and all("!" <= c <= "~" for c in name):
        return name
    return "-"


async def send_datagram(
    sock: socket.socket,
    data: bytes,
    *,
    stall: float,
    where: str,
    ancdata: Iterable[tuple[int, int, bytes]] = (),
) -> None:
    """One datagram without ever blocking: MSG_DONTWAIT, and while the receiver's queue is
    full, an asynchronous wait for room of at most `stall` seconds (then TransientSinkError).
    Other OSErrors are the caller's to classify."""
    anc = list(ancdata)
    while True:
        try:
            sock.sendmsg([data], anc, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        else:
            return
        try:
            async with asyncio.timeout(stall):
                await _writable(sock)
        except TimeoutError:
            raise TransientSinkError(
                f"{where}: the receiver took nothing for {stall:g}s (queue full)"
            ) from None


async def _writable(sock: socket.socket) -> None:
    """Until the socket can send: on a connected AF_UNIX datagram socket, until the
    receiver's queue has room (Linux wakes us when the reader takes a datagram)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


def reason(exc: OSError) -> str:
    """What went wrong, in the words of strerror(3) ("Connection refused")."""
    if exc.errno is None or isinstance(exc, socket.gaierror):
        return str(exc.strerror or exc)
    return os.strerror(exc.errno)


def unix_error(where: str, exc: OSError) -> SinkError:
    """A failed connect or send on a local datagram socket, as a sink error."""
    if exc.errno == errno.EPROTOTYPE:  # a stream socket there: only a config change helps
        return PermanentSinkError(f"{where}: not a datagram socket")
    # ENOENT (receiver not started), ECONNREFUSED (stale socket), EACCES: may pass.
    return TransientSinkError(f"{where}: {reason(exc)}")


def connect_unix(path: str) -> socket.socket:
    """A non-blocking datagram socket connected to `path` (connected, so that poll reports
    whether the receiver's queue has room). Raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _keepalive(sock: socket.socket | None, timeout: float) -> None:
    """Notice a collector that vanished without a word (a NAT or firewall dropping the
    flow) in about a minute, not the kernel's 15: keepalive probes while idle, and a
    limit on how long sent bytes may stay unacknowledged."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # options missing on an odd kernel: best effort
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        user_timeout = int(max(timeout, KEEPALIVE_FLOOR) * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout)


def _reset(transport: asyncio.WriteTransport) -> None:
    """Drop a connection now, buffers and all. close() would keep the socket until its
    buffer drains, which a stalled collector never lets happen, and even abort() leaves
    the kernel sending the unsent bytes; a zero linger makes it a reset. A half-sent
    frame is lost either way: the batch is retried on a new connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class SyslogSink:
    """Forwards records as syslog lines to the local socket or to a remote collector."""

    def __init__(self, cfg: SyslogSinkConfig) -> None:
        self.name = cfg.name
        self.socket = str(cfg.socket)
        self.address = cfg.address
        self.protocol = cfg.protocol
        self.facility = SYSLOG_FACILITIES[cfg.facility]
        self.ident = cfg.ident
        self.timeout = cfg.timeout
        self.host = this_host()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        # One sender at a time on the TCP stream (the worker, and `test-alert`): frames
        # must not interleave, nor two connections be opened at once.
        self._tcp_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        if self.address is None:
            return f"syslog {self.socket}"
        host, port = self.address
        return f"syslog {self.protocol}://{host}:{port}"

    async def send_records(self, records: list[dict[str, object]]) -> None:
        if self.address is None:
            await self._send_local(records)
        elif self.protocol == "udp":
            await self._send_udp(self.address, records)
        else:
            async with self._tcp_lock:
                await self._send_tcp(self.address, records)

    async def _send_local(self, records: list[dict[str, object]]) -> None:
        # A socket per batch: nothing to leak on reload, and a restarted receiver's new
        # socket is found without reconnect logic.
        try:
            sock = connect_unix(self.socket)
        except OSError as exc:
            raise unix_error(self.where, exc) from exc
        with sock:
            pid = os.getpid()
            for record in records:
                data = rfc3164(record, self.facility, self.ident, pid)
                try:
                    await send_datagram(sock, data, stall=self.timeout, where=self.where)
                except OSError as exc:
                    raise unix_error(self.where, exc) from exc

    async def _send_udp(self, address: tuple[str, int], records: list[dict[str, object]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(*address, type=socket.SOCK_DGRAM)
            family, kind, proto, _, target = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, IndexError) as exc:  # TimeoutError and gaierror are OSErrors
            raise TransientSinkError(f"{self.where}: cannot resolve: {exc}") from exc
        with sock:
            pid = os.getpid()
            try:
                sock.setblocking(False)
                sock.connect(target)  # connected: a collector's ICMP "port unreachable" shows
                for record in records:
                    data = rfc5424(record, self.facility, self.ident, pid, self.host)
                    await send_datagram(sock, data, stall=self.timeout, where=self.where)
            except OSError as exc:
                raise TransientSinkError(f"{self.where}: {reason(exc)}") from exc

    async def _send_tcp(self, address: tuple[str, int], records: list[dict[str, object]]) -> None:
        pid = os.getpid()
        try:
            async with asyncio.timeout(self.timeout):
                writer = await self._connection(address)
            chunk = bytearray()
            for i, record in enumerate(records, 1):
                message = rfc5424(record, self.facility, self.ident, pid, self.host)
                chunk += b"%d %s" % (len(message), message)  # RFC 6587 octet counting
                if len(chunk) >= TCP_CHUNK or i == len(records):
                    writer.write(chunk)
                    chunk = bytearray()
                    # Per chunk: a slow collector that takes data is not a stalled one.
                    async with asyncio.timeout(self.timeout):
                        await writer.drain()
        except OSError as exc:  # refused, reset, timed out (TimeoutError), cannot resolve
            self._disconnect()
            if isinstance(exc, TimeoutError):
                raise TransientSinkError(f"{self.where}: no progress in {self.timeout:g}s") from exc
            raise TransientSinkError(f"{self.where}: {reason(exc)}") from exc
        except asyncio.CancelledError:
            self._disconnect()  # part of a frame may be out: the stream cannot be resumed
            raise

    async def _connection(self, address: tuple[str, int]) -> asyncio.StreamWriter:
        """The open connection, or a new one if the collector closed or reset the old one."""
        if self._stream is not None:
            reader, writer = self._stream
            if not writer.is_closing() and not reader.at_eof():
                return writer
            self._disconnect()
        reader, writer = await asyncio.open_connection(*address)
        _keepalive(writer.get_extra_info("socket"), self.timeout)
        self._stream = (reader, writer)
        return writer

    async def aclose(self) -> None:
        """Close the collector connection, if one is open (shutdown, or the sink replaced):
        gracefully within `timeout`, so what was sent arrives; else cut it."""
        async with self._tcp_lock:  # a batch still being sent finishes (or fails) first
            if self._stream is None:
                return
            writer = self._stream[1]
            self._stream = None
        writer.close()
        try:
            async with asyncio.timeout(self.timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):  # TimeoutError: a stalled collector
            _reset(writer.transport)

    def _disconnect(self) -> None:
        if self._stream is not None:
            _reset(self._stream[1].transport)
            self._stream = None


SINK = EventSinkType(
    name="syslog",
    config=SyslogSinkConfig,
    describe=describe,
    build=SyslogSink,
    check=_check,
)
