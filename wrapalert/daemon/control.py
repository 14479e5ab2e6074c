"""The control socket: one JSON request line in, one JSON reply line out.

AF_UNIX stream, mode 0600 (only the daemon's user may ask), requests of at
most 64 KiB, each connection served with a timeout. The same module holds
the small synchronous client the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

MAX_REQUEST = 64 * 1024
TIMEOUT = 10.0
TEST_ALERT_BUDGET = 8.0  # seconds `test-alert` waits for the sinks: within TIMEOUT
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The daemon could not be asked, or said no."""


class NotRunningError(ControlError):
    """Nothing listens on the control socket: no daemon runs (or, socket-activated, none
    has started yet)."""


def listening(path: Path) -> bool:
    """Whether a datagram socket at `path` has a reader: systemd's, while a socket-activated
    service is idle, or a running daemon's. Connecting sends nothing, so it starts nothing."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(str(path))
    except OSError:
        return False
    return True


async def serve(path: Path, handlers: dict[str, Handler]) -> asyncio.Server:
    """Listen on `path` (replacing a stale socket) with the given command handlers."""
    _clear_stale(path)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                line = await reader.readline()
                reply = await _dispatch(line, handlers)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.warning("control_request_failed", error=str(exc) or type(exc).__name__)
        finally:
            writer.close()

    old = os.umask(0o177)  # born 0600: no window in which others may connect
    try:
        server = await asyncio.start_unix_server(on_connect, path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    return server


def _clear_stale(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()


async def _dispatch(line: bytes, handlers: dict[str, Handler]) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": "request needs a cmd"}
    handler = handlers.get(request["cmd"])
    if handler is None:
        return {"ok": False, "error": f"unknown command {request['cmd'][:40]!r}"}
    try:
        return {"ok": True, **await handler(request)}
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}


def request(path: Path, cmd: str, **args: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON values
    """Ask the daemon; raise ControlError with a helpful message if it cannot be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunningError(f"wrapalert is not running (no daemon at {path})") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the control socket is 0600)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the daemon sent no valid reply") from None
    if not isinstance(reply, dict):
        raise ControlError("the daemon sent no valid reply")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the daemon refused the request")))
    return reply
