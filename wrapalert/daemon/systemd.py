"""The two systemd protocols we speak: socket activation and sd_notify."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()
SD_LISTEN_FDS_START = 3


def adopt_socket() -> socket.socket | None:
    """The datagram socket systemd passed us (LISTEN_FDS), or None if there is none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    # Unset so nothing we start believes the sockets are its own.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM:
        sock.detach()
        raise OSError("the socket systemd passed is not an AF_UNIX datagram socket")
    sock.setblocking(False)
    return sock


def notify(state: str) -> bool:
    """Send one sd_notify message if NOTIFY_SOCKET is set; never block, never raise."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, path)
    except OSError as exc:
        log.warning("sd_notify_failed", state=state.split("=", maxsplit=1)[0], error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds systemd allows between WATCHDOG=1 pings, if it asked for them."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


HEARTBEAT = 5.0  # seconds between STATUS= updates when systemd listens


async def heartbeat(
    status: Callable[[], dict[str, object]], sleep: Callable[[float], Awaitable[None]]
) -> None:
    """WATCHDOG=1 at half systemd's interval (proof the loop runs) and `STATUS=` lines
    from the daemon's status."""
    watchdog = watchdog_interval()
    interval = min(HEARTBEAT, watchdog / 2) if watchdog else HEARTBEAT
    while True:
        now = status()
        state = now.get("state")
        memory = isinstance(state, dict) and state.get("ok") is False
        status_line = (
            f"STATUS=received {now['received']}, pending {now['pending_events']},"
            f" outbox {now['outbox']}" + (", state in memory only" if memory else "")
        )
        notify(f"WATCHDOG=1\n{status_line}" if watchdog else status_line)
        await sleep(interval)
