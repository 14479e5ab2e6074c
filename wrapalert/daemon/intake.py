"""Intake: the notify socket and the spool, into validated events.

Reads with `recvmsg` until EAGAIN from `loop.add_reader`, at most `BATCH`
datagrams per wake-up so timers and deliveries keep running under a flood
(the rest waits in the kernel queue, whose overflow the client spools).
Credentials come from SO_PASSCRED: pid 0 means none were attached.
Bad input is counted by reason and logged at a bounded rate; it never
stops intake.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from wrapalert import wire
from wrapalert.daemon import systemd
from wrapalert.daemon.stats import Stats
from wrapalert.model import Event

log = structlog.get_logger()

BATCH = 1024
SPOOL_BATCH = 1000
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANC_SIZE = socket.CMSG_SPACE(_CREDS.size)
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: IntFlag arithmetic costs microseconds
_SCM_CREDENTIALS = int(socket.SCM_CREDENTIALS)
_SOL_SOCKET = int(socket.SOL_SOCKET)


class LogLimit:
    """Allows `per_minute` log lines per key; suppressed lines are counted and reported."""

    def __init__(self, per_minute: int = 10, now: Callable[[], float] = time.monotonic) -> None:
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


def take_socket(path: Path, mode: int) -> tuple[socket.socket, Path | None]:
    """The socket systemd passed us, else one we bind at `path`; and the path to remove
    at exit (None: systemd's, which outlives us)."""
    sock = systemd.adopt_socket()
    if sock is not None:
        return sock, None
    return open_socket(path, mode), path


def open_socket(path: Path, mode: int) -> socket.socket:
    """Bind the notify socket ourselves; refuse to steal one a live daemon holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: nobody reads it
        else:
            raise OSError(f"{path} is in use by a running daemon")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        # Before bind: a datagram queued before SO_PASSCRED carries no credentials.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(path))
        # The spawning services run as many users; trust comes from the credentials.
        path.chmod(mode)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Intake:
    """Turns datagrams and spool files into events for `accept`."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        trusted_uids: tuple[int, ...],
        stats: Stats,
        accept: Callable[[Event], None],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.sock = sock
        self.trusted = frozenset(trusted_uids)
        self.stats = stats
        self.accept = accept
        self.now = now
        self.log_limit = LogLimit()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def close(self, unlink: Path | None = None) -> None:
        """Close the socket; remove `unlink`, the path we bound it at (not systemd's)."""
        self.sock.close()
        if unlink is not None:
            with contextlib.suppress(FileNotFoundError):
                unlink.unlink()

    def drain(self, limit: int | None = BATCH) -> int:
        """Read until EAGAIN or `limit` datagrams; returns how many were read.

        The loop a flood runs through: `handle` is inlined, names are local, and the
        credentials' usual place (the first control message) is tried first.
        """
        n = 0
        recvmsg = self.sock.recvmsg
        parse, wire_error = wire.parse, wire.WireError
        trusted_uids, stats, accept, now = self.trusted, self.stats, self.accept, self.now
        while limit is None or n < limit:
            try:
                data, ancdata, flags, _ = recvmsg(wire.MAX_DATAGRAM + 1, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.error("recv_failed", error=str(exc))
                break
            n += 1
            if flags & _MSG_TRUNC:
                self.reject("too_large", None)
                continue
            pid, uid = _credentials(ancdata)
            try:
                fields = parse(data)
            except wire_error as exc:
                self.reject(exc.reason, uid)
                continue
            trusted = uid in trusted_uids
            stats.received += 1
            if not trusted:
                stats.untrusted += 1
            accept(Event(fields, now(), uid, pid, trusted))
        return n

    def handle(self, data: bytes, *, uid: int | None, pid: int | None, origin: str) -> bool:
        """Validate one datagram's bytes and pass the event on; False if rejected.

        (The socket's loop in `drain` does the same inline.)
        """
        try:
            fields = wire.parse(data)
        except wire.WireError as exc:
            self.reject(exc.reason, uid)
            return False
        trusted = uid in self.trusted
        self.stats.received += 1
        if not trusted:
            self.stats.untrusted += 1
        self.accept(Event(fields, self.now(), uid, pid, trusted, origin))
        return True

    def reject(self, reason: str, uid: int | None) -> None:
        self.stats.rejected[reason] += 1
        allowed, suppressed = self.log_limit.allow(reason)
        if allowed:
            log.warning("event_rejected", reason=reason, uid=uid, suppressed=suppressed)

    def sweep_stale(self, directory: Path) -> None:
        if removed := _sweep(directory, self.now()):
            log.info("spool_stale_removed", files=removed, path=str(directory))

    def ingest_spool(self, directory: Path, skip: set[str], limit: int = SPOOL_BATCH) -> list[str]:
        """Read up to `limit` spool files not in `skip`; return the names read.

        Files are NOT removed here: the owner removes them once the events
        they held are committed, so a crash in between loses nothing and,
        as the names are committed too, counts nothing twice. The bound
        keeps one scan from stalling the event loop; the next takes the rest.
        """
        try:
            names = sorted(p.name for p in directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("spool_unreadable", path=str(directory), error=str(exc))
            return []
        # A leading dot: a client is still writing it.
        names = [n for n in names if not n.startswith(".") and n not in skip][:limit]
        count = 0
        for name in names:
            data, uid = _read_spool_file(directory / name)
            if data is None:
                self.reject("bad_spool_file", uid)
            elif self.handle(data, uid=uid, pid=None, origin="spool"):
                self.stats.spooled += 1
                count += 1
        if count:
            log.info("spool_ingested", events=count, path=str(directory))
        return names


STALE_DOT_FILE = 60.0  # seconds: a client writes its dot file in microseconds


def _sweep(directory: Path, now: float) -> int:
    """Remove dot files older than STALE_DOT_FILE: a client killed mid-write leaves them,
    and they would count towards the client's spool cap for ever."""
    removed = 0
    try:
        with os.scandir(directory) as scan:
            entries = [e for e in scan if e.name.startswith(".")]
    except OSError:
        return 0
    for entry in entries:
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > STALE_DOT_FILE:
                Path(entry.path).unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, int | None]:
    """(pid, uid) from SCM_CREDENTIALS, (None, None) when none were attached.

    The kernel puts the credentials first (before any SCM_RIGHTS, which the
    control buffer has no room for), so one message is all there is to look at.
    """
    if ancdata:
        level, kind, payload = ancdata[0]
        if kind == _SCM_CREDENTIALS and level == _SOL_SOCKET and len(payload) >= _CREDS.size:
            pid, uid, _gid = _CREDS.unpack_from(payload)
            if pid:  # 0: queued before SO_PASSCRED, or sent without credentials
                return pid, uid
    return None, None


def _read_spool_file(path: Path) -> tuple[bytes | None, int | None]:
    """A spool file's bytes and owner; None for links, non-files and oversized files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        # Checked before reading: a directory opens fine, and then fails to be read.
        if not stat.S_ISREG(st.st_mode) or st.st_size > wire.MAX_DATAGRAM:
            return None, st.st_uid
        # The file's owner is kernel-verified like a sender's credentials.
        return os.read(fd, wire.MAX_DATAGRAM + 1), st.st_uid
    except OSError:
        return None, None
    finally:
        os.close(fd)
