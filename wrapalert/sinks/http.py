"""HTTP for the forwarding sinks (alertmanager, webhook): a small asyncio HTTP/1.1 client.

Why not `urllib.request` in a thread: its timeout bounds each socket operation,
not the request, so a server that trickles bytes holds the thread for ever,
and Python 3.11's `asyncio.run` joins executor threads at exit, so one stuck
POST would stall the daemon's shutdown. Here one `asyncio.timeout` bounds the
whole exchange and cancelling it closes the socket at once. urllib's other
gifts are not wanted for a POST: it turns a 301/302 into a body-less GET (a
GET /api/v2/alerts answers 200, so the loss would look like success). What
we give up is proxy support; https uses the system's CAs (`SSL_CERT_FILE`
too). Redirects are not followed: the answer is a permanent error naming
where to point the URL.

The client sends one request per connection (`Connection: close`) and reads
the status; the body of a POST only when it failed, at most `MAX_REPLY` bytes,
for the message. A GET (the fleet's poll of Alertmanager, daemon/fleet.py)
reads a successful body whole, up to the `limit` it is given: a longer one is
refused (`ReplyTooLargeError`), never buffered past it. Errors map onto the
sink errors: no connection, a timeout, 408, 429 or 5xx is transient; 3xx,
other 4xx, an untrusted certificate or an answer that is not HTTP is
permanent (retrying cannot change it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from wrapalert.confparse import HttpUrl
from wrapalert.sinks.base import PermanentSinkError, SinkError, TransientSinkError

MAX_REPLY = 4096  # bytes of a failure's body read for its message
MAX_HEADERS = 100
MAX_LINE = 8192  # a status or header line longer than this is not a sane HTTP reply
MESSAGE_CHARS = 200  # of the server's words in an error message
BODY_GRACE = 1.0  # seconds to read a failure's body once its status is known
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r?\n")
# Headers that frame the request: set by us alone.
FRAMING_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def _version() -> str:
    try:
        return importlib.metadata.version("wrapalert")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


USER_AGENT = f"wrapalert/{_version()}"


class _BadReplyError(Exception):
    """The peer's answer is not HTTP/1.x."""


class ReplyTooLargeError(TransientSinkError):
    """A GET's body is longer than its limit: not read further."""


@dataclass(frozen=True)
class Target:
    """Where to POST (a URL config parsed) and how long to wait; `display` is what
    messages show."""

    url: HttpUrl
    display: str
    timeout: float  # seconds for the whole exchange, connect to reply
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        url: HttpUrl,
        *,
        timeout: float,
        redact: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> Target:
        """`redact` keeps the path and query (often a token) out of messages; `context`
        verifies an https peer (default: the system's CAs)."""
        if url.tls and context is None:
            # Made per target, not per module: the CA set is read when the sink is built.
            context = ssl.create_default_context()
        return cls(
            url=url,
            display=url.origin if redact else url.origin + url.path.partition("?")[0],
            timeout=timeout,
            context=context if url.tls else None,
        )


def tls_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A client context that trusts `ca_file` alone (a private CA, as Alertmanager's own
    tls_server_config uses), or the system's CAs; OSError or ssl.SSLError if the file
    cannot be read as PEM certificates."""
    return ssl.create_default_context(cafile=ca_file)


async def post(
    target: Target,
    body: bytes,
    *,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> None:
    """POST `body`; return on 2xx, else raise TransientSinkError or PermanentSinkError."""
    request = _request("POST", target, body, headers, content_type)
    await _call(target, request, None)


async def get(target: Target, *, limit: int, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """GET the target; its body on 2xx (at most `limit` bytes, else ReplyTooLargeError),
    else raise TransientSinkError or PermanentSinkError as `post` does."""
    request = _request("GET", target, None, headers, None)
    return await _call(target, request, limit)


async def _call(target: Target, request: bytes, limit: int | None) -> bytes:
    """One exchange; the body of a 2xx reply when `limit` is given (a GET), else b""."""
    timeout = target.timeout
    try:
        async with asyncio.timeout(timeout):
            status, reason, reply, writer = await _exchange(target, request, limit)
    except TimeoutError:
        raise TransientSinkError(f"{target.display}: no answer within {timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:  # before OSError: it is one too
        raise PermanentSinkError(f"{target.display}: {exc.verify_message or exc}") from exc
    except ssl.SSLError as exc:
        if exc.reason != "WRONG_VERSION_NUMBER":
            raise TransientSinkError(f"{target.display}: {_describe(exc)}") from exc
        # A plain-HTTP server on the https URL's port: retrying cannot change that.
        problem = "the server does not speak TLS there (an http:// URL?)"
        raise PermanentSinkError(f"{target.display}: {problem}") from exc
    except ReplyTooLargeError as exc:
        raise ReplyTooLargeError(f"{target.display}: {exc}") from None
    except (OSError, EOFError) as exc:  # refused, reset, DNS, TLS, closed before replying
        raise TransientSinkError(f"{target.display}: {_describe(exc)}") from exc
    except _BadReplyError as exc:
        raise PermanentSinkError(f"{target.display}: {exc}") from exc
    # Past the deadline's reach: a slow goodbye must not turn an answer into a timeout.
    await _goodbye(writer)
    if 200 <= status < 300:
        return reply
    raise _failure(target, status, reason, reply)


def _failure(target: Target, status: int, reason: str, reply: bytes) -> SinkError:
    """The error a non-2xx answer is: transient for 408, 429 and 5xx, else permanent."""
    words = _words(reply)
    message = f"{target.display}: HTTP {status} {_clean(reason)}" + (f": {words}" if words else "")
    if status in (408, 429) or status >= 500:
        return TransientSinkError(message)
    if 300 <= status < 400:
        return PermanentSinkError(f"{message} (redirects are not followed: use the final URL)")
    return PermanentSinkError(message)


def _request(
    method: str,
    target: Target,
    body: bytes | None,
    headers: Sequence[tuple[str, str]],
    content_type: str | None,
) -> bytes:
    framing = {"Host": target.url.host_header, "Connection": "close"}
    defaults = {"User-Agent": USER_AGENT}
    if body is not None:
        framing["Content-Length"] = str(len(body))
        defaults["Content-Type"] = content_type or "application/octet-stream"
    else:
        defaults["Accept"] = "application/json"
    # The framing is always ours (config refuses those names); the defaults can be replaced.
    extra = [(k, v) for k, v in headers if k.lower() not in FRAMING_HEADERS]
    given = {name.lower() for name, _ in extra}
    lines = [f"{method} {target.url.path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in framing.items()]
    lines += [f"{k}: {v}" for k, v in defaults.items() if k.lower() not in given]
    lines += [f"{k}: {v}" for k, v in extra]
    for line in lines:
        if "\r" in line or "\n" in line or "\0" in line:  # config checks it; never trust that here
            raise PermanentSinkError(f"{target.display}: header holds a line break: {line[:40]!r}")
    # Header values are latin-1 on the wire (RFC 9110); anything else cannot be sent.
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise PermanentSinkError(f"{target.display}: header is not latin-1: {exc}") from None
    return head + (body or b"")


async def _exchange(
    target: Target, request: bytes, limit: int | None
) -> tuple[int, str, bytes, asyncio.StreamWriter]:
    """Send the request; the reply's status, reason, body (a failure's, or with `limit` a
    success's too), and the open stream."""
    reader, writer = await asyncio.open_connection(
        target.url.host,
        target.url.port,
        ssl=target.context,
        server_hostname=target.url.host if target.url.tls else None,
        limit=MAX_LINE,
    )
    try:
        writer.write(request)
        await writer.drain()
        status, reason, fields = await _head(reader)
        if not 200 <= status < 300:
            reply = await _body(reader, fields)
        elif limit is not None:
            reply = await _whole_body(reader, fields, limit)
        else:
            reply = b""
        if 300 <= status < 400 and "location" in fields:
            reason = f"{reason} -> {fields['location'][:MESSAGE_CHARS]}"
    except BaseException:
        writer.transport.abort()  # failed or cancelled: no goodbye, the socket goes now
        raise
    return status, reason, reply, writer


async def _goodbye(writer: asyncio.StreamWriter) -> None:
    """Close politely (TLS close_notify), briefly; then for good, whatever the peer does."""
    writer.close()
    closed = False
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(BODY_GRACE):
            await writer.wait_closed()
            closed = True
    if closed:
        return
    # Debian 12's python3 (3.11.2) raises AttributeError from a TLS transport's abort()
    # once its connection is lost (fixed in later 3.11 releases): the socket is gone then.
    with contextlib.suppress(AttributeError):
        writer.transport.abort()


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadReplyError("reply line too long") from None


async def _head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """Status and header fields of the final reply (interim 1xx replies are skipped)."""
    for _ in range(10):
        line = await _line(reader)
        match = _STATUS.fullmatch(line)
        if match is None:
            raise _BadReplyError(f"not an HTTP reply: {_clean(line[:40].decode('latin-1'))!r}")
        status = int(match[1])
        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = await _line(reader)
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise _BadReplyError("bad header line")
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            raise _BadReplyError(f"more than {MAX_HEADERS} header lines")
        if status >= 200:
            return status, (match[2] or b"").decode("latin-1"), fields
    raise _BadReplyError("too many interim (1xx) replies")


async def _body(reader: asyncio.StreamReader, fields: dict[str, str]) -> bytes:
    """Up to MAX_REPLY bytes of a failure's body; whatever arrived if it is cut or slow."""
    out = bytearray()
    # The status already decided the outcome: the body only words the message.
    with contextlib.suppress(TimeoutError, EOFError, ValueError, _BadReplyError):
        async with asyncio.timeout(BODY_GRACE):
            if "chunked" in fields.get("transfer-encoding", "").lower():
                while len(out) < MAX_REPLY:
                    size = int((await _line(reader)).split(b";")[0].strip(), 16)
                    if size == 0:
                        break
                    out += await reader.readexactly(min(size, MAX_REPLY - len(out)))
                    await reader.readexactly(2)  # the chunk's CRLF
            else:
                length = fields.get("content-length", "")
                want = min(int(length), MAX_REPLY) if length.isdigit() else MAX_REPLY
                while len(out) < want:
                    chunk = await reader.read(want - len(out))
                    if not chunk:
                        break
                    out += chunk
    return bytes(out)


async def _whole_body(reader: asyncio.StreamReader, fields: dict[str, str], limit: int) -> bytes:
    """A successful reply's body, all of it: by Content-Length, chunks, or until the peer
    closes (we asked for `Connection: close`). More than `limit` bytes: ReplyTooLargeError
    once the limit is passed, so a peer cannot make us hold more."""
    out = bytearray()

    def room(size: int) -> int:
        if len(out) + size > limit:
            raise ReplyTooLargeError(f"reply larger than {limit:,} bytes")
        return size

    if "chunked" in fields.get("transfer-encoding", "").lower():
        while True:
            head = (await _line(reader)).split(b";")[0].strip()
            try:
                size = int(head, 16)
            except ValueError:
                raise _BadReplyError("bad chunk size") from None
            if size == 0:
                break
            out += await reader.readexactly(room(size))
            await reader.readexactly(2)  # the chunk's CRLF
        return bytes(out)
    length = fields.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise _BadReplyError("bad Content-Length")
        return await reader.readexactly(room(int(length)))
    while chunk := await reader.read(65536):
        room(len(chunk))
        out += chunk
    return bytes(out)


def _words(reply: bytes) -> str:
    """The server's explanation, one line, bounded: fit for a log line and `status`."""
    text = _clean(" ".join(reply.decode("utf-8", "replace").split()))
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _clean(text: str) -> str:
    """A peer's words made safe to log and print: no C0/C1 controls, no bidi overrides
    (anything not printable), so a hostile server cannot drive the admin's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError is one
        return "connection closed before a reply"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own words ("Connect call failed") say less
    return str(exc) or type(exc).__name__
