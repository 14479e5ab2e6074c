"""The quiet watch: a daemon that averaged quiet_min refusals a day over 7 days and went
silent for quiet_after gets one notice, again only after it reported once more; a
daemon that never was busy, or a watch turned off ("0"), tells nothing. On the running
daemon, on virtual time: days in milliseconds."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from helpers import Mailbox, Running, SinksInForce, make_config, send_refusals
from timing import ManualClock, VirtualClock, run

from wrapalert import config
from wrapalert.daemon.activity import DAY, Activity
from wrapalert.daemon.notices import Post
from wrapalert.daemon.quiet import QuietWatch, quiet
from wrapalert.daemon.server import Server
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice
from wrapalert.sinks.base import MAIL, Built

HOUR = 3600.0
T0 = 1_700_006_400.0  # a UTC midnight


def busy(activity: Activity, daemon: str, per_day: int, days: int = 7) -> float:
    """`per_day` refusals on each of `days` days from T0; the last one's time."""
    for d in range(days):
        for n in range(per_day):
            activity.seen(daemon, T0 + d * DAY + 12 * HOUR + n)
    return activity.last[daemon]


def test_a_busy_daemon_silent_for_quiet_after_is_quiet() -> None:
    activity = Activity()
    last = busy(activity, "sshd", 310)
    busy(activity, "in.ftpd", 3)
    found = quiet(activity, last + 48 * HOUR, after=48 * HOUR, minimum=10, told={})
    assert [(q.daemon, q.last_seen, q.average) for q in found] == [("sshd", last, 310.0)]
    assert quiet(activity, last + 47 * HOUR, after=48 * HOUR, minimum=10, told={}) == []
    assert quiet(activity, last + 48 * HOUR, after=48 * HOUR, minimum=10, told={"sshd": last}) == []


class Watch:
    def __init__(self, tmp_path: Path, clock: ManualClock, hook: config.HookConfig) -> None:
        self.store = Store(tmp_path / "state", clock.now)
        self.store.open()
        self.mail = Mailbox(clock)
        self.post = Post(SinksInForce({"mail": self.mail}), self.store, clock, Stats())
        self.activity = Activity()
        in_force = replace(config.Config(), hook=hook)  # a Config has the `cfg` it asks for
        self.watch = QuietWatch(
            _InForce(in_force), self.activity, self.post, self.store, clock, host="web1"
        )
        self.watch.load()

    @property
    def told(self) -> list[Notice]:
        return [p.notice for p in self.post.pending]


class _InForce:
    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg


def test_one_notice_until_it_reports_again_and_then_one_more(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    w = Watch(tmp_path, clock, config.HookConfig())
    last = busy(w.activity, "sshd", 20)
    clock.t = last + 49 * HOUR
    assert [q.daemon for q in w.watch.check(48 * HOUR, 10)] == ["sshd"]
    assert w.watch.check(48 * HOUR, 10) == []
    (notice,) = w.told
    assert notice.kind == "quiet"
    assert notice.quiet is not None
    assert (notice.quiet.daemon, notice.quiet.average) == ("sshd", 20.0)
    w.activity.seen("sshd", clock.t)  # it reports again: the next silence is news again
    for day in range(7):
        for n in range(20):
            w.activity.seen("sshd", clock.t + day * DAY + n)
    clock.t = w.activity.last["sshd"] + 49 * HOUR
    assert [q.daemon for q in w.watch.check(48 * HOUR, 10)] == ["sshd"]
    assert len(w.told) == 2


def test_who_was_told_outlives_a_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    w = Watch(tmp_path, clock, config.HookConfig())
    last = busy(w.activity, "sshd", 20)
    clock.t = last + 49 * HOUR
    w.watch.check(48 * HOUR, 10)
    assert w.store.commit()
    w.store.close()
    again = Watch(tmp_path, clock, config.HookConfig())
    busy(again.activity, "sshd", 20)  # the ledger restores the same activity
    assert again.watch.check(48 * HOUR, 10) == []


def test_on_the_running_daemon_the_notice_comes_quiet_after_the_last_refusal(
    sockdir: Path,
) -> None:
    """Refusals reported through the socket for seven virtual days, then none: one quiet
    notice reaches the mail sink between 48 and 49 hours after the last (the watch looks
    hourly), and none in the next days."""
    cfg = make_config(sockdir)
    cfg = replace(
        cfg,
        daemon=replace(cfg.daemon, commit_interval=600.0, spool_scan_interval=3600.0),
        hook=replace(cfg.hook, quiet_after=48 * HOUR, quiet_min=5),
    )
    clock = VirtualClock(T0)

    async def scenario() -> tuple[float, list[tuple[float, Notice]], dict[str, object]]:
        mail = Mailbox(clock)
        server = Server(cfg, sinks=[Built(mail, MAIL)], clock=clock)
        async with Running(server):
            for _ in range(7):
                send_refusals(cfg.daemon.socket, count=8)
                await asyncio.sleep(DAY)
            last = server.ledger.activity.last["sshd"]
            await mail.wait_notices(1, within=3 * DAY)
            await asyncio.sleep(4 * DAY)
            hook = server.hook()
        return last, mail.notices, hook

    last, notices, hook = run(scenario())
    ((at, notice),) = notices
    assert 48 * HOUR <= at - last <= 49 * HOUR
    assert notice.quiet is not None
    assert (notice.quiet.daemon, notice.quiet.average) == ("sshd", 8.0)
    assert hook["quiet"] == [{"daemon": "sshd", "last_seen": last}]


def test_quiet_after_0_turns_the_watch_off(sockdir: Path) -> None:
    """The same week, with quiet_after = "0": nothing, ever."""
    cfg = make_config(sockdir)
    cfg = replace(
        cfg,
        daemon=replace(cfg.daemon, commit_interval=600.0, spool_scan_interval=3600.0),
        hook=replace(cfg.hook, quiet_after=0.0, quiet_min=1),
    )
    clock = VirtualClock(T0)

    async def scenario() -> list[tuple[float, Notice]]:
        mail = Mailbox(clock)
        async with Running(Server(cfg, sinks=[Built(mail, MAIL)], clock=clock)):
            for _ in range(7):
                send_refusals(cfg.daemon.socket, count=8)
                await asyncio.sleep(DAY)
            await asyncio.sleep(10 * DAY)
        return mail.notices

    assert run(scenario()) == []
