"""Intake: the notify socket and the spool, into validated events.

Reads with `recvmsg` until EAGAIN from `loop.add_reader`, at most `BATCH`
datagrams per wake-up so timers and deliveries keep running under a flood
(the rest waits in the kernel queue, whose overflow the client spools).
Credentials come from SO_PASSCRED: pid 0 means none were attached.
Bad input is counted by reason and logged at a bounded rate; it never
stops intake. A valid report then meets, in this order: the canary book (a
trusted report of the refusal `wrapalert canary` made is counted there and
goes no further, daemon/canaries.py), `Twins` (the hook line's second copy of
one refusal is dropped, daemon/twins.py) and the `Witness` (what the kernel
says of its source: tcp, udp or unknown, daemon/witness.py), each batch of
them with its own lookup budget. Trusted refusals passed on are counted per
daemon and day (daemon/activity.py: what the quiet watch reads).
"""

from __future__ import annotations

import contextlib
import socket
import stat
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import structlog

from wrapalert import wire
from wrapalert.clock import SYSTEM
from wrapalert.daemon import systemd
from wrapalert.daemon.activity import Activity
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.twins import Twins
from wrapalert.daemon.witness import Witness
from wrapalert.logs import LogLimit
from wrapalert.model import Event

log = structlog.get_logger()

BATCH = 1024
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANC_SIZE = socket.CMSG_SPACE(_CREDS.size)
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: IntFlag arithmetic costs microseconds
_SCM_CREDENTIALS = int(socket.SCM_CREDENTIALS)
_SOL_SOCKET = int(socket.SOL_SOCKET)


class SpoolFileLike(Protocol):
    """A spool file a pass read (daemon/spool.py's SpoolFile; this module sits below it)."""

    @property
    def data(self) -> bytes | None: ...
    @property
    def uid(self) -> int | None: ...
    @property
    def reason(self) -> str: ...


class Target(Protocol):
    """Where accepted events go: the pipeline in force and who is trusted, read at each
    batch, since a reload replaces them (daemon/reload.py's Reloader)."""

    @property
    def accept(self) -> Callable[[Event], None]: ...

    @property
    def trusted_uids(self) -> frozenset[int]: ...


class Canary(Protocol):
    """The canary book (daemon/canaries.py): the refusals it expects, and its claim."""

    @property
    def expected(self) -> Mapping[tuple[str, str, str], object]: ...

    def claims(self, fields: dict[str, str]) -> bool: ...


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
        target: Target,
        stats: Stats,
        twins: Twins,
        witness: Witness,
        canary: Canary,
        activity: Activity,
        now: Callable[[], float] = SYSTEM.now,
    ) -> None:
        self.sock = sock
        self.target = target
        self.stats = stats
        self.twins = twins
        self.witness = witness
        self.canary = canary
        self.activity = activity
        self.now = now
        self.log_limit = LogLimit(now=now)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    @property
    def trusted(self) -> frozenset[int]:
        """The trusted uids in force."""
        return self.target.trusted_uids

    def refuse_new(self, bound: Path | None) -> None:
        """At shutdown, on a socket we bound ourselves: from now on a send fails (ENOENT by
        path, EPIPE on a connected socket), so the client spools the event instead of
        queueing a datagram that close() would drop. What is queued stays to be drained.
        systemd's socket outlives us and keeps what queues for the next start: untouched."""
        if bound is None:
            return
        with contextlib.suppress(FileNotFoundError):
            bound.unlink()
        self.sock.shutdown(socket.SHUT_RD)

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
        target = self.target  # read once a batch: a reload between batches replaces them
        trusted_uids, accept = target.trusted_uids, target.accept
        stats, now = self.stats, self.now
        copy, check = self.twins.copy, self.witness.check
        seen, canary = self.activity.seen, self.canary
        self.witness.new_batch()
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
            received = now()
            if trusted and canary.expected and canary.claims(fields):
                continue
            if copy(uid, fields, received, trusted=trusted):
                stats.duplicates += 1
                continue
            stats.received += 1
            if not trusted:
                stats.untrusted += 1
            elif fields.get("verdict") != "allow":
                seen(fields["daemon"], received)
            event = Event(fields, received, uid, pid, trusted)
            check(event)
            accept(event)
        return n

    def handle(self, data: bytes, *, uid: int | None, pid: int | None, origin: str) -> bool:
        """Validate one datagram's bytes and pass the event on; False if rejected (or a
        copy of one already passed on, or the canary's).

        (The socket's loop in `drain` does the same inline.)
        """
        try:
            fields = wire.parse(data)
        except wire.WireError as exc:
            self.reject(exc.reason, uid)
            return False
        trusted = uid in self.trusted
        received = self.now()
        if trusted and self.canary.expected and self.canary.claims(fields):
            return False
        if self.twins.copy(uid, fields, received, trusted=trusted):
            self.stats.duplicates += 1
            return False
        self.stats.received += 1
        if not trusted:
            self.stats.untrusted += 1
        elif fields.get("verdict") != "allow":
            self.activity.seen(fields["daemon"], received)
        event = Event(fields, received, uid, pid, trusted, origin)
        self.witness.check(event)
        self.target.accept(event)
        return True

    def reject(self, reason: str, uid: int | None) -> None:
        self.stats.rejected[reason] += 1
        allowed, suppressed = self.log_limit.allow(reason)
        if allowed:
            log.warning("event_rejected", reason=reason, uid=uid, suppressed=suppressed)

    def accept_spool(self, files: Iterable[SpoolFileLike]) -> int:
        """Spool files a pass read: each one's event passed on, or its refusal counted;
        returns how many events were accepted. Attribution is by the uid the pass
        found (the file's owner, checked against its private dir's)."""
        count = 0
        self.witness.new_batch()
        for item in files:
            if item.data is None:
                self.reject(item.reason, item.uid)
            elif self.handle(item.data, uid=item.uid, pid=None, origin="spool"):
                self.stats.spooled += 1
                count += 1
        if count:
            log.info("spool_ingested", events=count)
        return count

    def count_junk(self, junk: Counter[str]) -> None:
        """Spool entries that held no event (stale dot files, squatters), by reason."""
        for reason, n in junk.items():
            self.stats.rejected[reason] += n
            allowed, suppressed = self.log_limit.allow(reason)
            if allowed:
                log.warning("spool_junk_removed", reason=reason, entries=n, suppressed=suppressed)

    def count_fallbacks(self, fallbacks: Counter[int]) -> None:
        """Events clients sent to syslog, not to us (their markers in the spool), by trust."""
        for uid, n in fallbacks.items():
            trust = "trusted" if uid in self.trusted else "untrusted"
            self.stats.syslog_fallbacks[trust] += n
            log.warning("syslog_fallbacks_counted", uid=uid, trust=trust, events=n)


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
