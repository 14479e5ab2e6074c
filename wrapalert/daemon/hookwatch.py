"""The hook watch: is the hosts.deny line still there, and does libwrap still run it?

Every POLL seconds the watch reads `[hook] hosts_allow` and `hosts_deny`
(a few kilobytes) and compares the bytes with the last read. Polling the
content catches every way a table changes: an editor's rename (a new
inode), an append in place (`>>`: same inode, new size), a bind-mounted file
(same inode, new content, whatever its mtime says), and it needs no inotify
watch that a rename or a mount would silently end. A change is checked once
the content is the same at two polls (an editor that writes in steps is not
caught half way; at most SETTLE_MAX after the first change, it is checked
whatever it is), so a problem is seen within POLL to 2 x POLL seconds. Every
RECHECK seconds the tables are checked again unchanged: a program the line
runs may have gone. Idle cost: two small reads every 2 s
(bench/results/hook_watch.md).

The check is hookcheck.problems (the linter of `wrapalert check-hosts`, and
libwrap's decision modelled), run in a thread, its problems reported to the
alarm book as source `tables`. Once a day (and at start) the link check asks,
for every service that reported in the last 30 days (daemon/activity.py) or
was seen to link libwrap before, whether its binary still links it
(elflink.py): one that linked it at an earlier look and no longer does is a
problem (source `links`); one never seen to link it (a service wrapped by
something we do not know of) proves nothing. What each service linked at the
last look is saved in the state database.

`[hook] watch = false` turns both off and withdraws their problems (no
notice: nobody knows whether they were fixed). Paths and the switch are read
each round from the config in force, so a reload changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from wrapalert import checkhosts, elflink, hookcheck
from wrapalert.clock import Clock
from wrapalert.config import Config, HookConfig
from wrapalert.daemon.activity import Activity
from wrapalert.daemon.store import Store
from wrapalert.hostsdeny import Install
from wrapalert.notice import Problem

log = structlog.get_logger()

POLL = 2.0
OFF_POLL = 60.0  # while [hook] watch = false: how soon a reload that turns it on is heeded
SETTLE_MAX = 10.0  # a table that keeps changing is checked this long after its first change
RECHECK = 60.0
LINK_EVERY = 86400.0
REPORTED_WITHIN = 30 * 86400.0
MAX_LINKED = 256  # services remembered as linking libwrap
MAX_TABLE = 1 << 20  # bytes read of a table (libwrap reads on; a larger one is not ours)


class InForce(Protocol):
    """The config in force (daemon/reload.py's Reloader)."""

    @property
    def cfg(self) -> Config: ...


class Reporter(Protocol):
    """The alarm book (daemon/alarm.py)."""

    def report(self, source: str, problems: list[Problem]) -> None: ...

    def withdraw(self, source: str) -> None: ...


@dataclass(frozen=True)
class Read:
    """One table as read: its bytes, None when missing, or why it could not be read."""

    path: Path
    data: bytes | None
    error: str | None = None


def read_table(path: Path) -> Read:
    try:
        with path.open("rb") as f:
            return Read(path, f.read(MAX_TABLE))
    except FileNotFoundError:
        return Read(path, None)
    except OSError as exc:
        return Read(path, None, exc.strerror or str(exc))


def _read_pattern_file(path: str) -> bytes | None:
    """A table's `/file` pattern (hostsaccess.Reader): its bytes, or None."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def table_problems(
    allow: Read, deny: Read, installation: checkhosts.Installation, reporters: list[str]
) -> list[Problem]:
    """What the tables say (a table that cannot be read is a problem, and read as empty)."""
    found = [hookcheck.unreadable(str(t.path), t.error) for t in (allow, deny) if t.error]
    tables = hookcheck.Tables(allow.data, deny.data, str(allow.path), str(deny.path))
    if deny.error is None:
        found += hookcheck.problems(tables, installation, reporters, _read_pattern_file)
    return found


class HookWatch:
    """Polls the tables, checks them and the services' linkage; `run` is its task."""

    def __init__(
        self,
        in_force: InForce,
        alarm: Reporter,
        activity: Activity,
        store: Store,
        clock: Clock,
        *,
        command: str = "wrapalert hosts-deny-line",
        bin_dirs: tuple[str, ...] = elflink.BIN_DIRS,
    ) -> None:
        self.in_force = in_force
        self.alarm = alarm
        self.activity = activity
        self.store = store
        self.clock = clock
        self.command = command  # the fix's command, with -c FILE when the daemon has one
        self.bin_dirs = bin_dirs  # where the link check looks for a service's program
        self.watching: tuple[Path, Path] | None = None
        self.checked: float | None = None  # the tables' last check
        self.links_checked: float | None = None
        self.linked: dict[str, bool] = {}  # service -> it linked libwrap at the last look
        self._last: tuple[Read, Read] | None = None  # the last poll's read
        self._checked: tuple[Read, Read] | None = None  # what the last check read
        self._changed: float | None = None  # when the content first differed from it
        self._next_full = 0.0
        self._next_links = 0.0

    async def run(self) -> None:
        while True:
            hook = self.in_force.cfg.hook
            if hook.watch:
                await self.poll(hook)
            elif self.watching is not None:
                self._stop()
            await self.clock.sleep(POLL if hook.watch else OFF_POLL)

    def _stop(self) -> None:
        self.watching = None
        self._last = self._checked = None
        self.alarm.withdraw("tables")
        self.alarm.withdraw("links")
        log.info("hook_watch_off")

    async def poll(self, hook: HookConfig) -> None:
        """One round: read both tables; check them when they settled after a change (or
        at the first round, or RECHECK after the last check); the links when due."""
        now = self.clock.now()
        read = (read_table(hook.hosts_allow), read_table(hook.hosts_deny))
        if read != self._last:
            self._last = read
            if self._changed is None:
                self._changed = now
            if self._checked is not None and now - self._changed < SETTLE_MAX:
                return  # changed since the last poll: check once it holds still
        if read == self._checked:
            self._changed = None  # changed and back again: nothing to check
        if read != self._checked or now >= self._next_full:
            await self._check(read)
        if now >= self._next_links:
            await self.check_links()

    async def _check(self, read: tuple[Read, Read]) -> None:
        cfg = self.in_force.cfg
        installation = checkhosts.Installation.of(
            Install.here(sys.executable, cfg.daemon.socket, cfg.daemon.spool_dir), self.command
        )
        now = self.clock.now()
        reporters = self.activity.reporters(now - REPORTED_WITHIN)
        problems = await asyncio.to_thread(table_problems, *read, installation, reporters)
        if self.watching is None or self._checked is None or read != self._checked:
            log.info(
                "hook_checked",
                allow=str(read[0].path),
                deny=str(read[1].path),
                problems=len(problems),
            )
        self.watching = (read[0].path, read[1].path)
        self._checked, self._changed = read, None
        self.checked, self._next_full = now, now + RECHECK
        self.alarm.report("tables", problems)

    async def check_links(self) -> None:
        """Does each service that reported (or linked libwrap before) still link it?"""
        now = self.clock.now()
        self._next_links = now + LINK_EVERY
        names = self.activity.reporters(now - REPORTED_WITHIN)
        names += [d for d, linked in self.linked.items() if linked and d not in names]
        looked = await asyncio.to_thread(_linkages, names, self.bin_dirs)
        problems = []
        for daemon, (path, links) in looked.items():
            if links is True:
                self.linked[daemon] = True
            elif links is False and self.linked.get(daemon):
                problems.append(unlinked(daemon, path))
            elif links is False:
                self.linked.setdefault(daemon, False)  # never seen linking: proves nothing
        while len(self.linked) > MAX_LINKED:
            del self.linked[next(iter(self.linked))]
        self.links_checked = now
        self.store.stage_value("links", self.linked)
        log.info("links_checked", services=len(looked), unlinked=len(problems))
        self.alarm.report("links", problems)

    def load(self) -> None:
        """What each service linked at the last look (the state database)."""
        data = self.store.value("links")
        if isinstance(data, dict):
            self.linked = {
                str(k): v for k, v in list(data.items())[:MAX_LINKED] if isinstance(v, bool)
            }

    def status(self) -> dict[str, Any]:
        return {
            "watching": [str(p) for p in self.watching] if self.watching else [],
            "checked": self.checked,
            "links_checked": self.links_checked,
        }


def _linkages(daemons: list[str], bin_dirs: tuple[str, ...]) -> dict[str, tuple[Path, bool | None]]:
    """Each service's binary and whether it links libwrap (None: cannot tell); services
    whose binary is not found are left out."""
    out = {}
    for daemon in daemons:
        path = elflink.binary(daemon, bin_dirs=bin_dirs)
        if path is not None:
            with contextlib.suppress(OSError):
                out[daemon] = (path, elflink.linkage(path))
    return out


def unlinked(daemon: str, path: Path) -> Problem:
    return Problem(
        key=f"unlinked:{daemon}",
        kind="unlinked",
        path=str(path),
        line=0,
        message=(
            f"{daemon} reported refusals, and {path} linked libwrap when last looked at; it no "
            f"longer does ({elflink.LIBWRAP} is not among the libraries it loads): it no longer "
            "reads hosts.deny, so it refuses no one there and nothing is reported"
        ),
        fix=(
            f"reinstall a build of {daemon} with TCP wrappers (Debian's has them), or "
            "refuse its clients another way (a firewall)"
        ),
    )
