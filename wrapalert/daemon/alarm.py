"""The alarm book: whether refused connections reach the daemon, and who said they do not.

Three watchers report what stops refusals reaching the daemon, each its own
set of `Problem`s (wrapalert/notice.py), which replaces its last one: the
hook watch reading the tables (`tables`), its daily link check (`links`,
daemon/hookwatch.py) and the canary (`canary`, daemon/canaries.py). A problem
is the same problem while its key is (keys hold no line numbers). From the
change between two reports:

* a problem no source had open: one alarm-off notice (daemon/notices.py) to
  every digest sink, naming the new problems (and those still open);
* the last open problem gone: one alarm-on notice naming every problem fixed
  since the alarm went off;
* either way, a `hook` record for the sinks that take notices (Alertmanager's
  `WrapalertHookBroken`), posted again every REFRESH seconds while broken.

Durable: the open problems (with when each was first seen) and those fixed
while others stayed open are saved in the state database with the notices
they caused, so a restart sends no notice twice and misses none. `withdraw`
drops a source's problems without a notice (its watch was turned off: nobody
knows whether they were fixed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice, Problem

log = structlog.get_logger()

SOURCES = ("tables", "links", "canary")
REFRESH = 60.0  # seconds between WrapalertHookBroken posts while broken (it fires for 3)
MAX_PROBLEMS = 64  # per source: a table that breaks in every line is still one alarm
LISTED = 5  # problems a hook record names


class Post(Protocol):
    """Where notices and records go (daemon/notices.py)."""

    def notice(self, notice: Notice) -> None: ...

    def offer(self, record: dict[str, object]) -> None: ...


class Alarm:
    """The open problems by source; `run` refreshes the alert while any is open."""

    def __init__(self, store: Store, clock: Clock, post: Post, host: str) -> None:
        self.store = store
        self.clock = clock
        self.post = post
        self.host = host
        self.open: dict[str, dict[str, Problem]] = {}
        self.fixed: dict[str, Problem] = {}  # fixed while others stayed open: for alarm-on

    @property
    def ok(self) -> bool:
        return not any(self.open.values())

    def problems(self) -> list[Problem]:
        """Every open problem, oldest first, each once."""
        merged: dict[str, Problem] = {}
        for source in SOURCES:
            for key, problem in self.open.get(source, {}).items():
                merged.setdefault(key, problem)
        return sorted(merged.values(), key=lambda p: (p.since, p.key))

    def report(self, source: str, problems: Iterable[Problem]) -> None:
        """`source`'s problems now (all of them: what it does not name is fixed)."""
        now = self.clock.now()
        before = {p.key: p for p in self.problems()}
        mine: dict[str, Problem] = {}
        for problem in problems:
            if len(mine) >= MAX_PROBLEMS:
                break
            known = before.get(problem.key)
            mine[problem.key] = replace(problem, since=known.since if known else now)
        if mine == self.open.get(source, {}):
            return  # nothing changed: nothing to save or tell
        self.open[source] = mine
        after = {p.key: p for p in self.problems()}
        added = [p for key, p in after.items() if key not in before]
        gone = [p for key, p in before.items() if key not in after]
        for problem in gone:
            self.fixed[problem.key] = problem
        for problem in added:
            self.fixed.pop(problem.key, None)
        if added:
            still = tuple(p for key, p in after.items() if key in before)
            self._tell(Notice("alarm-off", self.host, now, tuple(added), still))
        elif gone and not after:
            self._tell(Notice("alarm-on", self.host, now, tuple(self.fixed.values())))
            self.fixed.clear()
        self._save()
        if added or gone:
            self.post.offer(self.record(now))

    def withdraw(self, source: str) -> None:
        """Drop `source`'s problems without a notice: its watch is off, nobody knows."""
        if not self.open.pop(source, None):
            return
        if self.ok:
            self.fixed.clear()
        self._save()
        self.post.offer(self.record(self.clock.now()))
        log.info("hook_problems_withdrawn", source=source)

    def _tell(self, notice: Notice) -> None:
        for problem in notice.problems:
            if notice.kind == "alarm-off":
                log.error(
                    "alarm_off", problem=problem.kind, where=problem.where, why=problem.message
                )
            else:
                log.info("alarm_on", fixed=problem.kind, where=problem.where)
        self.post.notice(notice)

    def record(self, now: float) -> dict[str, object]:
        """The `hook` record for the sinks that take notices (WrapalertHookBroken)."""
        problems = self.problems()
        return {
            "type": "hook",
            "ok": not problems,
            "problems": [f"{p.where}: {p.message}" for p in problems[:LISTED]],
            "more": max(0, len(problems) - LISTED),
            "since": min((p.since for p in problems), default=now),
            "refresh": REFRESH,
        }

    async def run(self) -> None:
        """While broken, post the alert again every REFRESH seconds, so it keeps firing."""
        while True:
            await self.clock.sleep(REFRESH)
            if not self.ok:
                self.post.offer(self.record(self.clock.now()))

    # -- the state database -------------------------------------------------------------

    def _save(self) -> None:
        self.store.stage_value(
            "alarm",
            {
                "open": {
                    source: [p.as_dict() for p in problems.values()]
                    for source, problems in self.open.items()
                    if problems
                },
                "fixed": [p.as_dict() for p in self.fixed.values()],
            },
        )

    def load(self) -> None:
        """The open problems the last run left; a damaged document opens none."""
        data = self.store.value("alarm")
        if not isinstance(data, dict):
            return
        with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
            opened = data.get("open", {})
            self.open = {
                source: {p.key: p for p in map(Problem.from_dict, opened.get(source, []))}
                for source in SOURCES
                if opened.get(source)
            }
            self.fixed = {p.key: p for p in map(Problem.from_dict, data.get("fixed", []))}

    def status(self) -> dict[str, Any]:
        """The alarm's part of `wrapalert status`'s `hook` object."""
        return {
            "ok": self.ok,
            "problems": [
                {**p.as_dict(), "source": source}
                for source in SOURCES
                for p in self.open.get(source, {}).values()
            ],
        }
