"""Spool ingestion: events clients wrote to disk while the daemon was down or busy.

Layout (README, "Threat model"):

* `spool_dir` itself: shared, sticky and world-writable, for every uid;
* `spool_dir/<uid>/` for each trusted uid: a directory that uid owns, group
  the spool's (`spool_dir`'s group, the daemon's), mode 2770, made here when
  the daemon may give it away (as root), else by tmpfiles (the package makes
  root's); at start and on every pass, whoever squatted the name first is
  removed. A client whose euid owns such a directory, which nobody but that
  uid and the spool's group may write, spools there, so no other local user
  can fill a trusted uid's spool. Made once, it stays when the daemon stops:
  it works while the daemon is down or restarting.

The spool's group is how a daemon without capabilities reads and removes
other uids' files: the directories are setgid, so every file made in them
belongs to that group, and the client makes its files 0640 there (readable by
the group, writable by nobody but their owner). The daemon owns `spool_dir`
itself, which lets it remove any entry of the sticky directory.

Clients spool when the socket is missing and when its queue is full, so the
spool is read at start, every `spool_scan_interval` and at shutdown. Its
files are removed only once their events are committed (the names are
committed with them, so a crash in between counts nothing twice). Anything
may be in the shared directory: a file is accepted only when it is regular,
has one link, mode 0600 or stricter (0640 when its group is the spool's) and
belongs to the uid it is attributed to; everything else is rejected and
counted by reason. Dot files (a client mid-write) are removed and counted
once their inode change time or their mtime is more than `STALE_DOT_FILE`
from now (so at once when dated in the future or the past). A client that
had to fall back to syslog appended a byte to `<uid>.syslog`: each pass
renames such a marker aside and counts it once no client can still be
writing to it. What cannot be removed (a directory someone filled, say) is
counted once and then skipped; that memory is bounded.

The file-system work of a pass (`scan`) runs in a thread, so 100,000 junk
entries cost the event loop nothing but the result; it is bounded too
(`SPOOL_BATCH` files read, `SWEEP_BATCH` entries swept per pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from wrapalert import userns, wire
from wrapalert.clock import Clock, wall
from wrapalert.daemon.intake import Intake
from wrapalert.daemon.store import Store

log = structlog.get_logger()

STUCK_MAX = 10_000  # entries we could not remove, remembered so as to skip them
SPOOL_BATCH = 1000  # files read per pass; the next pass takes the rest
SWEEP_BATCH = 20_000  # dot files looked at per pass
STALE_DOT_FILE = 60.0  # seconds: a client writes its dot file in microseconds
# A renamed fallback marker is counted this long after its last change: the client's
# whole run is bounded to 0.25 s, so by then no client still has it open.
MARKER_SETTLE = 1.0
MARKER_MAX = 100_000  # fallbacks one marker may claim (it is the size of a file)
PRIVATE_MODE = 0o2770  # owner and the spool's group; setgid: files get that group
_MARKER = re.compile("([0-9]{1,10})[.]syslog")
_COUNTING = re.compile("[.]([0-9]{1,10})[.]syslog[.][0-9]{1,20}")


@dataclass
class SpoolFile:
    """One spool file read by a pass: its bytes, or None and why it was refused."""

    name: str  # relative to the spool dir: "x.wa1" or "0/x.wa1"
    data: bytes | None
    uid: int | None
    reason: str = "bad_spool_file"


@dataclass
class ScanResult:
    """What one pass found; only the event loop acts on it (counts, events)."""

    files: list[SpoolFile] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)  # junk, by reason
    fallbacks: Counter[int] = field(default_factory=Counter)  # uid -> syslog fallbacks
    stuck: list[str] = field(default_factory=list)  # junk that would not go: skip it
    # Per directory, the last dot file swept: the next pass goes on from there.
    cursors: dict[str, str] = field(default_factory=dict)


class Spool:
    """Owns one spool directory's reading and clean-up."""

    def __init__(
        self,
        path: Path,
        *,
        intake: Intake,
        store: Store,
        commit: Callable[[], bool],
        clock: Clock,
        seen: Iterable[str] = (),
    ) -> None:
        self.path = path
        self.intake = intake
        self.store = store
        self.commit = commit
        self.clock = clock
        # Files counted by the last run but not yet removed: remove, never count twice.
        self.taken: set[str] = set(seen)
        self.stuck: set[str] = set()
        self._warned: set[int] = set()
        self._cursors: dict[str, str] = {}
        self._seen = userns.ranges()  # a process's user namespace never changes
        self._squatters: dict[int, tuple[int, int]] = {}  # uid -> the entry that stays

    def ensure(self) -> None:
        """Create the spool dir if we can: sticky and world-writable, as clients run as anyone."""
        if not self.path.is_dir():
            try:
                self.path.mkdir(parents=True)
                self.path.chmod(0o1777)
            except OSError as exc:
                log.warning("spool_unavailable", path=str(self.path), error=str(exc))
                return
        squatters: Counter[str] = Counter()
        for uid in sorted(self.intake.trusted):
            self._ensure_private(uid, squatters)
        self.intake.count_junk(squatters)

    def ingest(self) -> None:
        """One pass, all on the calling thread (at start and at shutdown)."""
        self.apply(self.scan(wall(), self.taken | self.stuck))
        if gone := self.ready_to_remove():
            self.removed(remove_all(self.path, gone))

    async def run(self, interval: float) -> None:
        interval = max(interval, 0.1)
        while True:
            await self.clock.sleep(interval)
            try:
                # The file system's part in a thread: a spool full of junk must not
                # stall intake, timers and deliveries.
                skip = self.taken | self.stuck
                self.apply(await asyncio.to_thread(self.scan, wall(), skip))
                if gone := self.ready_to_remove():
                    self.removed(await asyncio.to_thread(remove_all, self.path, gone))
            except Exception:  # a task boundary: hostile spool content must not stop us
                log.exception("spool_scan_failed", path=str(self.path))

    # -- the pass, in parts -------------------------------------------------

    def scan(self, now: float, skip: set[str]) -> ScanResult:
        """The file-system work of a pass; changes no daemon state (runs in a thread).

        `now` is the kernel's wall clock (clock.wall), never the daemon's injected one:
        it is compared with file times."""
        trusted = sorted(self.intake.trusted)
        try:
            group = self.path.stat().st_gid
        except OSError:
            group = None
        names = {str(uid) for uid in trusted}
        one = _Pass(now, skip, names, dict(self._cursors), group, seen=self._seen)
        # Trusted uids' own dirs first: junk anyone keeps in the shared one must not spend
        # the pass's read budget before they are read.
        for uid in trusted:
            if self._ensure_private(uid, one.result.rejected):
                one.directory(self.path / str(uid), uid)
        one.directory(self.path, None)
        return one.result

    def apply(self, result: ScanResult) -> None:
        """Count what a pass found and pass its events on (on the event loop)."""
        self.intake.accept_spool(result.files)
        self.intake.count_junk(result.rejected)
        self.intake.count_fallbacks(result.fallbacks)
        taken = [f.name for f in result.files]
        self.store.stage_spool_seen(taken)
        self.taken.update(taken)
        self._remember_stuck(result.stuck)
        self._cursors = result.cursors

    def ready_to_remove(self) -> list[str]:
        """The files whose events are committed (none if the commit failed: then the
        files are the only durable copy and stay)."""
        if not self.taken or not self.commit():
            return []
        return sorted(self.taken)

    def removed(self, stuck: list[str]) -> None:
        """After `remove_all`: forget what went, remember (bounded) what could not."""
        self._remember_stuck(stuck)
        self.store.stage_spool_gone(sorted(self.taken))
        self.taken.clear()

    def _remember_stuck(self, names: list[str]) -> None:
        for name in names:
            if len(self.stuck) >= STUCK_MAX:
                self.stuck.clear()  # bounded: at worst such entries recount
            self.stuck.add(name)

    def _ensure_private(self, uid: int, rejected: Counter[str]) -> bool:
        """Make `spool_dir/<uid>` a directory `uid` owns, group the spool's, mode 2770 (or
        find it made so); True once it is one the daemon may read and clients may trust."""
        path = self.path / str(uid)
        try:
            group = self.path.stat().st_gid
        except OSError:
            return False
        for _ in range(3):  # a squatter may race us: a few tries, then the next pass
            try:
                st = path.lstat()
            except FileNotFoundError:
                if _make_private(path, uid, group):
                    continue
                self._unavailable(uid, path, "the daemon cannot chown (not root)")
                return False
            except OSError:
                return False
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                return self._usable(uid, path, st, group)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                # Ours, but we may not give it away (no CAP_CHOWN): clients of `uid`
                # use the shared spool.
                self._unavailable(uid, path, "the daemon cannot chown")
                return False
            if not self._evict(uid, path, st, rejected):
                break  # it stays: trying again now would fail again
        return False

    def _evict(self, uid: int, path: Path, st: os.stat_result, rejected: Counter[str]) -> bool:
        """Remove another user's entry on a trusted uid's name; True if it went. Counted
        and logged once per entry: one that cannot be removed (say, a directory whose
        content is not ours to delete) must not count and log again on every pass."""
        entry = (st.st_dev, st.st_ino)
        first = self._squatters.get(uid) != entry
        if first:
            rejected["spool_squatter"] += 1
        error = _remove_tree(path, st)
        if error is None:
            self._squatters.pop(uid, None)
            log.warning("spool_squatter_removed", path=str(path), owner=st.st_uid, uid=uid)
            return True
        if first:
            log.warning("spool_squatter_stays", path=str(path), owner=st.st_uid, error=error)
            self._unavailable(uid, path, "another user's entry there cannot be removed")
        self._squatters[uid] = entry
        return False

    def _usable(self, uid: int, path: Path, st: os.stat_result, group: int) -> bool:
        """`uid`'s own directory, found: give it the spool's group and mode 2770 if we may
        (root); True if nobody else may fill it and the daemon may read and clean it."""
        if (st.st_mode & 0o7777, st.st_gid) != (PRIVATE_MODE, group):
            _fix_private(path, group)  # only root may (and need only root's)
            with contextlib.suppress(OSError):
                st = path.lstat()
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == uid and private_enough(st, group)):
            self._unavailable(uid, path, "not 2770 in the spool's group (clients pass it by)")
            return False
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            self._unavailable(uid, path, "the daemon may not read and clean it")
            return False
        return True

    def _unavailable(self, uid: int, path: Path, why: str) -> None:
        """No private spool for `uid` (its clients use the shared one): say so once."""
        if uid in self._warned:
            return
        self._warned.add(uid)
        log.warning(
            "spool_private_unavailable",
            path=str(path),
            uid=uid,
            why=why,
            hint="make it owned by that uid, group the spool's, mode 2770 "
            f"(tmpfiles: d {path} 2770 {uid} wrapalert -)",
        )


def private_enough(st: os.stat_result, group: int | None) -> bool:
    """A trusted uid's own directory that nobody else may fill and the daemon may empty:
    not writable by others; its group the spool's (the daemon's), with rwx; setgid, so
    the files made in it are the daemon's to read. The client applies the same rule
    (notify.open_spool): a directory the daemon would not read gets no event."""
    mode = st.st_mode
    return not mode & 0o002 and st.st_gid == group and mode & 0o2070 == 0o2070


class _Pass:
    """One pass over the spool's directories: what it read, swept and set aside."""

    def __init__(
        self,
        now: float,
        skip: set[str],
        private_names: set[str],
        cursors: dict[str, str],
        group: int | None = None,
        *,
        seen: list[tuple[int, int]] | None = None,
    ) -> None:
        self.now = now
        self.group = group  # the spool's group: files it may read are the daemon's to read
        self.skip = skip
        self.private_names = private_names
        self.budget = SPOOL_BATCH
        self.result = ScanResult(cursors=cursors)
        self.seen = seen  # the uids our user namespace shows (userns.py); None: all

    def directory(self, path: Path, owner: int | None) -> None:
        """The shared directory (`owner` None: a file speaks for its owner) or a trusted
        uid's own (every file must be that uid's). Everything in it is reached through
        one descriptor of it: a uid that swaps its own directory for a symlink between
        the check and the pass cannot point a root-run daemon at another directory."""
        prefix = "" if owner is None else f"{owner}/"
        try:
            fd = open_dir(path, owner)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("spool_unreadable", path=str(path), error=str(exc))
            return
        try:
            self._read(fd, prefix, owner)
        finally:
            os.close(fd)

    def _read(self, fd: int, prefix: str, owner: int | None) -> None:
        try:
            names = os.listdir(fd)
        except OSError:
            return
        # No sorted() over all names: one C call that holds the GIL (and so stalls the
        # event loop) for tens of ms at 100,000; heapq.nsmallest yields it as it goes.
        dots = [n for n in names if n.startswith(".") and prefix + n not in self.skip]
        self._sweep(fd, prefix, self._window(prefix, dots), owner)
        events = []
        for name in names:
            if name.startswith(".") or (owner is None and name in self.private_names):
                continue  # dot files are swept; a trusted uid's own dir is read as such
            if _MARKER.fullmatch(name):
                _set_aside(fd, name, self.now)
            elif prefix + name not in self.skip:
                events.append(name)
        for name in heapq.nsmallest(self.budget, events):  # oldest first: names are times
            data, uid, reason = _read_spool_file(fd, name, owner, self.group)
            self.result.files.append(SpoolFile(prefix + name, data, uid, reason))
        self.budget -= min(self.budget, len(events))

    def _window(self, prefix: str, dots: list[str]) -> list[str]:
        """The next SWEEP_BATCH dot files (by name) after the last pass's, wrapping round:
        junk kept fresh at the front cannot hide what lies behind it."""
        cursor = self.result.cursors.get(prefix, "")
        window = heapq.nsmallest(SWEEP_BATCH, [n for n in dots if n > cursor])
        if len(window) < SWEEP_BATCH:
            before = [n for n in dots if n <= cursor]
            window += heapq.nsmallest(SWEEP_BATCH - len(window), before)
        if window:
            self.result.cursors[prefix] = window[-1]
        return window

    def _sweep(self, fd: int, prefix: str, dots: list[str], owner: int | None) -> None:
        """Dot files: count settled fallback markers; remove (and count) the rest unless
        both their times are within STALE_DOT_FILE of now, as a client's write in
        progress has them. Anyone can set a file's mtime (to the year 2100, say), but
        doing so sets its inode change time to now, which no user can set otherwise: so
        a file kept "fresh" that way goes as soon as its mtime is off, and any other
        within a minute of its last change."""
        now, result = self.now, self.result
        for name in dots:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            counting = _COUNTING.fullmatch(name)
            if counting is not None:
                if now - st.st_ctime < MARKER_SETTLE:
                    continue  # a client may still be appending: the next pass counts it
                # The uid the name claims, as our user namespace shows its owner: under
                # PrivateUsers=yes another user's marker reads as 65534, like its datagrams.
                uid = userns.seen_as(int(counting[1]), self.seen)
                # One byte per fallback: no datagram's size limit (MARKER_MAX caps the count).
                if _refusal(st, uid, self.group, None) is None and owner in {None, uid}:
                    result.fallbacks[uid] += min(st.st_size, MARKER_MAX)
                else:
                    result.rejected["bad_fallback_marker"] += 1
            elif abs(now - st.st_ctime) <= STALE_DOT_FILE >= abs(now - st.st_mtime):
                continue  # a client's write in progress: both times are about now
            else:
                result.rejected["stale_spool_file"] += 1
            if not _remove(fd, name):
                result.stuck.append(prefix + name)  # counted once: skipped from now on


def remove_all(directory: Path, names: list[str]) -> list[str]:
    """Remove these spool entries (`name` or `<uid>/name`); return those that must stay
    (runs in a thread). A trusted uid's own directory is opened as in the pass."""
    stay = []
    by_dir: dict[str, list[str]] = {}
    for entry in names:
        sub, _, name = entry.rpartition("/")
        by_dir.setdefault(sub, []).append(name)
    for sub, entries in by_dir.items():
        prefix = f"{sub}/" if sub else ""
        try:
            fd = open_dir(directory / sub if sub else directory, int(sub) if sub else None)
        except (OSError, ValueError):
            stay += [prefix + name for name in entries]
            continue
        try:
            stay += [prefix + name for name in entries if not _remove(fd, name)]
        finally:
            os.close(fd)
    return stay


def open_dir(path: Path, owner: int | None) -> int:
    """A descriptor of the directory at `path`, never through a symlink at its last step,
    and, for a trusted uid's own (`owner`), only if that uid owns it (else OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if owner is not None and os.fstat(fd).st_uid != owner:
        os.close(fd)
        raise PermissionError(errno.EPERM, "not owned by its uid", str(path))
    return fd


def _make_private(path: Path, uid: int, group: int) -> bool:
    """As root: mkdir, then give it to `uid` and the spool's group; True when there is
    now something to look at. Without CAP_CHOWN nothing is made: a directory the daemon
    owns would be no client's (tmpfiles makes it instead)."""
    if uid != os.geteuid() and os.geteuid() != 0:
        return False
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return True  # raced: look at what is there
    except OSError as exc:
        log.warning("spool_private_unavailable", path=str(path), uid=uid, error=str(exc))
        return False
    with contextlib.suppress(OSError):  # the next look says so (spool_private_unavailable)
        os.chown(path, uid, group, follow_symlinks=False)
    _chmod(path, PRIVATE_MODE)  # after chown, which may clear the setgid bit
    return True


def _fix_private(path: Path, group: int) -> None:
    """Give a trusted uid's directory the spool's group and mode 2770, if we may (root)."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        os.chown(path, -1, group, follow_symlinks=False)
    _chmod(path, PRIVATE_MODE)


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError, NotImplementedError):
        path.chmod(mode, follow_symlinks=False)


def _remove_tree(path: Path, st: os.stat_result) -> str | None:
    """Remove whatever squats a private dir's name (rmtree never follows symlinks); None
    if it went, else why not."""
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        return str(exc)
    return None


def _set_aside(fd: int, name: str, now: float) -> None:
    """Rename a fallback marker to a dot name the sweep counts once it has settled; new
    fallbacks start a new marker, so none is counted twice or lost."""
    # Gone already, or not ours to move: the next pass looks again.
    with contextlib.suppress(OSError):
        os.rename(name, f".{name}.{int(now * 1e6)}", src_dir_fd=fd, dst_dir_fd=fd)


def _refusal(
    st: os.stat_result,
    owner: int | None,
    group: int | None = None,
    size_limit: int | None = wire.MAX_DATAGRAM,
) -> str | None:
    """Why a spool file cannot speak for anyone, or None: it must be a small regular file
    with one link (a hard link brings someone else's file in), mode 0600 or stricter
    (0640 when its group is the spool's, `group`: the daemon reads it so), and, in a
    trusted uid's own directory, owned by that uid."""
    if not stat.S_ISREG(st.st_mode) or (size_limit is not None and st.st_size > size_limit):
        return "bad_spool_file"
    if st.st_nlink != 1:
        return "spool_hard_link"
    readable = 0o040 if group is not None and st.st_gid == group else 0
    if st.st_mode & 0o7177 & ~readable:
        return "spool_file_mode"
    if owner is not None and st.st_uid != owner:
        return "spool_file_owner"
    return None


def _read_spool_file(
    dir_fd: int, name: str, owner: int | None, group: int | None = None
) -> tuple[bytes | None, int | None, str]:
    """A spool file's bytes and the uid it speaks for (its owner, kernel-verified like a
    sender's credentials), or None and why it is refused (`_refusal`)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None, None, "bad_spool_file"
    try:
        # Checked before reading: a directory opens fine, and then fails to be read.
        st = os.fstat(fd)
        reason = _refusal(st, owner, group)
        if reason is not None:
            return None, st.st_uid, reason
        return os.read(fd, wire.MAX_DATAGRAM + 1), st.st_uid, ""
    except OSError:
        return None, None, "bad_spool_file"
    finally:
        os.close(fd)


def _remove(dir_fd: int, name: str) -> bool:
    """Remove a spool entry, file or (empty) directory; False if it must stay."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            return False
    except OSError:
        return False
    return True
