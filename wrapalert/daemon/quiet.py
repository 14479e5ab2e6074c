"""The quiet watch: a daemon that used to be refused every day and has gone silent.

Silence is what a broken hook looks like from the inside. For each daemon
the activity book knows (daemon/activity.py: trusted refusals per UTC day),
the rule is `quiet`: it averaged at least `[hook] quiet_min` refusals a day
over the 7 days up to its last refusal, and it has reported none for
`[hook] quiet_after` (default 48 h; "0": the watch is off). Such a daemon gets
one quiet notice ("sshd: no refusals for 48 h; it averaged 310 a day: is the
hook still in place?") to every digest sink (daemon/notices.py), and no other
until it reports again (then the next silence is news again). Who was told,
with the last refusal it was told about, is saved in the state database, so
a restart tells no one twice.

Checked every CHECK_EVERY seconds (at most a 24th of quiet_after), on the
injected clock: tests run days of it in milliseconds.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.config import Config
from wrapalert.daemon.activity import MAX_DAEMONS, Activity
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice, Quiet

log = structlog.get_logger()

CHECK_EVERY = 3600.0
CHECK_MIN = 60.0
DAYS = 7


class InForce(Protocol):
    """The config in force (daemon/reload.py's Reloader)."""

    @property
    def cfg(self) -> Config: ...


class Post(Protocol):
    def notice(self, notice: Notice) -> None: ...


def quiet(
    activity: Activity, now: float, *, after: float, minimum: float, told: dict[str, float]
) -> list[Quiet]:
    """The daemons silent for `after` seconds that averaged `minimum` refusals a day over
    the DAYS days up to their last one, less those in `told` (daemon -> the last refusal
    they were told about) that have not reported since."""
    found = []
    for daemon, last in activity.last.items():
        if told.get(daemon) == last or now - last < after:
            continue
        average = activity.average(daemon, last, DAYS)
        if average >= minimum:
            found.append(Quiet(daemon, last, average))
    return sorted(found, key=lambda q: (-q.average, q.daemon))


class QuietWatch:
    """Tells of each daemon that went quiet, once until it reports again; `run` is its task."""

    def __init__(
        self,
        in_force: InForce,
        activity: Activity,
        post: Post,
        store: Store,
        clock: Clock,
        *,
        host: str,
    ) -> None:
        self.in_force = in_force
        self.activity = activity
        self.post = post
        self.store = store
        self.clock = clock
        self.host = host
        self.told: dict[str, float] = {}  # daemon -> its last refusal when it was told of

    async def run(self) -> None:
        while True:
            hook = self.in_force.cfg.hook
            if hook.quiet_after > 0:
                self.check(hook.quiet_after, hook.quiet_min)
            interval = hook.quiet_after / 24 if hook.quiet_after > 0 else CHECK_EVERY
            await self.clock.sleep(min(CHECK_EVERY, max(CHECK_MIN, interval)))

    def check(self, after: float, minimum: float) -> list[Quiet]:
        """Tell of the daemons that went quiet since the last check; which ones."""
        now = self.clock.now()
        last = self.activity.last
        # Reported since it was told (or forgotten by the activity book): news again later.
        again = [d for d, at in self.told.items() if last.get(d) != at]
        for daemon in again:
            del self.told[daemon]
        found = quiet(self.activity, now, after=after, minimum=minimum, told=self.told)
        for q in found:
            self.told[q.daemon] = q.last_seen
            log.warning(
                "daemon_quiet", daemon=q.daemon, since=q.last_seen, average=round(q.average, 1)
            )
            self.post.notice(Notice("quiet", self.host, now, quiet=q))
        if found or again:
            self.store.stage_value("quiet", self.told)
        return found

    def load(self) -> None:
        data = self.store.value("quiet")
        if isinstance(data, dict):
            self.told = {
                str(d): float(at)
                for d, at in list(data.items())[:MAX_DAEMONS]
                if isinstance(at, int | float) and not isinstance(at, bool)
            }

    def status(self) -> list[dict[str, Any]]:
        """The daemons told of and still quiet: their name and last refusal."""
        return [{"daemon": d, "last_seen": at} for d, at in sorted(self.told.items())]
