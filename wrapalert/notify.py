"""wrapalert-notify: hand one refused connection to the wrapalert daemon.

Run by libwrap's `spawn` once per refused connection, as whatever user the
wrapped daemon runs as, so this file is the hot path and the attack surface:

* stdlib C modules only (``posix``, ``time``, ``_signal`` are loaded by the
  interpreter anyway; ``_socket`` is the one import we add), so that
  ``python3 -I -S notify.py`` starts as fast as a bare interpreter;
* ``KEY=VALUE`` arguments only, split at the first ``=``, keys from a fixed set:
  an expansion may start with ``-`` and ``%u`` may contain ``=``;
* one non-blocking datagram; spool file when the daemon is down or its queue
  stays full (retried for EAGAIN_WAIT, or ``wait=MS`` from the line: the durable
  line passes 0, logger having waited already); one syslog line when spooling
  fails too. Never silent;
* the spool file goes to ``SPOOL/<euid>/`` when that is a directory this euid
  owns that nobody else may write but the spool's group (the daemon's; the
  package makes root's, so no other user can fill it), else to the shared
  sticky ``SPOOL``. In a setgid spool directory the file is made 0640 (its
  group is then the daemon's, which reads it without privileges), else 0600. A
  fallback to syslog appends one byte to ``<euid>.syslog`` in that directory,
  so the daemon can count what it will never see;
* never reads stdin, never writes stdout/stderr, always exits 0, and an
  interval timer ends it after 250 ms whatever happens.

The wire format is ``WA1`` (wire.py reads it): a tag line, then ``key=value`` lines.
"""

import _signal  # type: ignore[import-not-found]  # no stubs; `signal` would import enum (ms)
import posix
import sys
import time

# Short wire keys the client forwards (`wrapalert notify --help` lists them).
FIELDS = frozenset("dpucanhsArRiv")
SOCKET = "/run/wrapalert/notify.sock"
SPOOL = "/var/spool/wrapalert"
SYSLOG = "/dev/log"
TAG = b"WA1"
MAX_VALUE = 255  # bytes; libwrap itself cuts at 127 (names) and 255 (%c, %s)
MAX_PATH = 1024
SPOOL_CAP = 10000  # files; past it the spool is full and we fall back to syslog
BUDGET = 0.25  # seconds, the whole run
LAST_WORD = 0.02  # seconds of it kept for the syslog line when the timer fires
EAGAIN_WAIT = 0.1  # seconds of retrying a full queue before spooling
LOG_AUTHPRIV_WARNING = 10 * 8 + 4

# Control bytes (C0, DEL, C1) become "_", as libwrap does with unsafe bytes.
# libwrap's own filter: these 73 bytes pass, every other byte becomes "_". Applying it
# here too means the daemon sees the same text whether libwrap or a person ran us.
_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!%+,-./:=@_"
_FILTER = bytes(c if c in _SAFE else 95 for c in range(256))
_PATH_CLEAN = dict.fromkeys((*range(32), 127), "_")


class _Timeout(BaseException):
    """Raised by the interval timer: the run is over, whatever it was doing."""


def _on_alarm(_signum: int, _frame: object) -> None:
    raise _Timeout


def clean(value: str, limit: int = MAX_VALUE) -> str:
    """One value as libwrap would pass it: its 73 safe bytes, every other byte "_", capped."""
    return value.encode("utf-8", "surrogateescape")[:limit].translate(_FILTER).decode("ascii")


def clean_path(value: str) -> str:
    """A socket or spool path from the hook line: kept as given but for control bytes."""
    return value[:MAX_PATH].translate(_PATH_CLEAN)


def parse_args(args: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split KEY=VALUE arguments into wire fields and client settings; ignore the rest."""
    fields: dict[str, str] = {}
    settings: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            continue
        if key in FIELDS:
            fields[key] = clean(value)
        elif key in ("socket", "spool", "syslog", "wait"):
            settings[key] = clean_path(value)
    return fields, settings


def encode(fields: dict[str, str], now: float, host: str) -> bytes:
    """The WA1 datagram: tag line, then one key=value line per field."""
    lines = [TAG]
    lines.extend(f"{key}={value}".encode() for key, value in fields.items())
    lines.append(b"t=%.6f" % now)
    lines.append(b"H=" + clean(host).encode())
    return b"\n".join(lines) + b"\n"


def send(payload: bytes, path: str, deadline: float) -> bool:
    """Send one datagram without blocking; retry a full queue until the deadline."""
    import _socket

    sock = _socket.socket(
        _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
    )
    try:
        pause = 0.002
        while True:
            try:
                sock.sendto(payload, path)
            except BlockingIOError:
                # The daemon is alive but behind: its queue drains in microseconds.
                if time.monotonic() + pause > deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            except OSError:
                return False  # no socket, no listener, not a socket, no permission
            else:
                return True
    finally:
        sock.close()


def open_spool(directory: str) -> int:
    """The spool dir to write to: this euid's own `<euid>/` in it when that is ours and
    nobody else may write there (so nobody else can fill it), else the shared one."""
    flags = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
    shared = posix.open(directory, flags)
    euid = posix.geteuid()
    try:
        own = posix.open(str(euid), flags, dir_fd=shared)
    except OSError:
        return shared
    st = posix.fstat(own)
    # The daemon's rule (daemon/spool.py, private_enough): not writable by others; the
    # spool's group with rwx, and setgid, so the daemon may read and remove what we write.
    group_ok = st.st_gid == posix.fstat(shared).st_gid and st.st_mode & 0o2070 == 0o2070
    if st.st_uid == euid and not st.st_mode & 0o002 and group_ok:
        posix.close(shared)
        return own
    posix.close(own)  # someone else's, writable by others or not the daemon's to read
    return shared


def spool(payload: bytes, directory: str, now: float) -> bool:
    """Write the datagram as one file in the spool dir: atomic, 0600, no symlinks, bounded.
    When it cannot, leave a fallback marker there (see `mark_fallback`)."""
    try:
        dir_fd = open_spool(directory)
    except OSError:
        return False
    try:
        count = 0
        with posix.scandir(dir_fd) as entries:
            for _entry in entries:
                count += 1
                if count >= SPOOL_CAP:
                    mark_fallback(dir_fd)
                    return False
        name = "%d.%d.wa1" % (int(now * 1e6), posix.getpid())  # noqa: UP031
        temp = "." + name
        fd = posix.open(
            temp,
            posix.O_WRONLY
            | posix.O_CREAT
            | posix.O_EXCL
            | posix.O_NOFOLLOW
            | posix.O_CLOEXEC
            | posix.O_NONBLOCK,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            readable_by_spool_group(fd, dir_fd)
            written = posix.write(fd, payload)
        except OSError:
            # A full disk (ENOSPC, EFBIG): remove the dot file below, like a short write.
            # Left behind, it would never be ingested and would count towards SPOOL_CAP.
            written = -1
        finally:
            posix.close(fd)
        if written != len(payload):
            posix.unlink(temp, dir_fd=dir_fd)
            mark_fallback(dir_fd)
            return False
        # The daemon ignores dot files, so it only ever sees complete events.
        posix.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        mark_fallback(dir_fd)
        return False
    else:
        return True
    finally:
        posix.close(dir_fd)


def readable_by_spool_group(fd: int, dir_fd: int) -> None:
    """In a setgid spool directory the new file has the directory's group, the daemon's:
    make it 0640 so that the daemon reads it without privileges (fchmod, not the open's
    mode, which the inherited umask may cut). Elsewhere it stays 0600."""
    directory = posix.fstat(dir_fd)
    if directory.st_mode & 0o2000 and posix.fstat(fd).st_gid == directory.st_gid:
        posix.fchmod(fd, 0o640)


def mark_fallback(dir_fd: int) -> None:
    """Append one byte to `<euid>.syslog` in the spool dir: the daemon counts (by size)
    the events that went to syslog instead, which it would otherwise never know of."""
    try:
        fd = posix.open(
            "%d.syslog" % posix.geteuid(),  # noqa: UP031 - as the spool file name above
            posix.O_WRONLY
            | posix.O_APPEND
            | posix.O_CREAT
            | posix.O_NOFOLLOW
            | posix.O_CLOEXEC
            | posix.O_NONBLOCK,
            0o600,
            dir_fd=dir_fd,
        )
    except OSError:
        return  # a full disk, a squatter's name: the daemon cannot know of this one
    try:
        st = posix.fstat(fd)
        # Another user's file (or a link to one) must not count our fallbacks.
        if st.st_uid == posix.geteuid() and st.st_nlink == 1:
            posix.write(fd, b"!")
    except OSError:
        pass
    finally:
        posix.close(fd)


def syslog(payload: bytes, path: str) -> None:
    """Last resort: one RFC 3164 line to the local syslog socket, without blocking."""
    import _socket

    body = payload.replace(b"\n", b" ").strip()
    line = b"<%d>wrapalert-notify[%d]: undelivered event: %s" % (
        LOG_AUTHPRIV_WARNING,
        posix.getpid(),
        body,
    )
    sock = _socket.socket(
        _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
    )
    try:
        sock.sendto(line, path)
    except OSError:
        pass
    finally:
        sock.close()


def prepare(args: list[str]) -> tuple[bytes, dict[str, str], float]:
    """The datagram for these arguments, the client's settings, and the event's time."""
    now = time.time()
    fields, settings = parse_args(args)
    import _socket

    return encode(fields, now, _socket.gethostname()), settings, now


def run(args: list[str]) -> str:
    """Deliver one event; return how: "sent", "spooled", "syslog" (for tests and logs)."""
    payload, settings, now = prepare(args)
    return deliver(payload, settings, now)


def eagain_wait(settings: dict[str, str]) -> float:
    """Seconds to retry a full queue: `wait=MS` from the line (0 when logger already
    waited), at most EAGAIN_WAIT; anything else means the default."""
    text = settings.get("wait", "")
    if not (text.isascii() and text.isdigit()):
        return EAGAIN_WAIT
    return min(int(text[:4]) / 1000, EAGAIN_WAIT)


def deliver(payload: bytes, settings: dict[str, str], now: float) -> str:
    """Socket, else spool, else syslog."""
    start = time.monotonic()
    if send(payload, settings.get("socket", SOCKET), start + eagain_wait(settings)):
        return "sent"
    if spool(payload, settings.get("spool", SPOOL), now):
        return "spooled"
    syslog(payload, settings.get("syslog", SYSLOG))
    return "syslog"


def main(args: list[str]) -> None:
    """Entry point for the spawn hook: close inherited fds, bound the run, exit 0."""
    payload: bytes = b""
    settings: dict[str, str] = {}
    try:
        # A libwrap-linked daemon may hand us the refused connection's socket.
        posix.closerange(3, 1 << 20)
        _signal.signal(_signal.SIGALRM, _on_alarm)
        # The timer leaves LAST_WORD of the budget for one syslog line if it fires.
        _signal.setitimer(_signal.ITIMER_REAL, BUDGET - LAST_WORD)
        try:
            payload, settings, now = prepare(args)
            deliver(payload, settings, now)
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
    except _Timeout:
        # Out of time (a starved CPU, a hung disk): say so rather than lose the event.
        if payload:
            try:
                syslog(payload, settings.get("syslog", SYSLOG))
            except BaseException:
                pass
    except BaseException:
        pass
    posix._exit(0)


def entry() -> None:
    """Console script `wrapalert-notify`."""
    main(sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
