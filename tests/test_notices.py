"""daemon/notices.py: notices to every sink that takes them, at once and past the mail cap;
a transient failure retried with backoff, a permanent one dropped and counted, the queue
bounded, what waits kept across a restart; and through the running daemon, a notice while
the mail cap holds the digests back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from helpers import Mailbox, Running, SinksInForce, make_config, send_refusals
from timing import ManualClock, VirtualClock, run

from wrapalert.daemon.notices import MAX_PENDING, Post
from wrapalert.daemon.server import Server
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice, Problem
from wrapalert.sinks.base import MAIL, Built, PermanentSinkError

PROBLEM = Problem("no_hook:/etc/hosts.deny", "no_hook", "/etc/hosts.deny", 0, "no rule", "add")


def notice(n: int = 0) -> Notice:
    return Notice("alarm-off", "web1", 1000.0 + n, (PROBLEM,))


class Refusing(Mailbox):
    """A mail sink that refuses every notice for good."""

    async def send_notice(self, _notice: Notice) -> None:
        raise PermanentSinkError("550 no such user")


def post_for(tmp_path: Path, clock: ManualClock, **sinks: Mailbox) -> tuple[Post, Store]:
    store = Store(tmp_path / "state", clock.now)
    store.open()
    post = Post(SinksInForce(dict(sinks)), store, clock, Stats(), backoff=(10.0, 60.0))
    post.load()
    return post, store


async def until(post: Post, done: object) -> None:
    """Run the post until `done()` holds (bounded)."""
    task = asyncio.create_task(post.run())
    try:
        async with asyncio.timeout(5):
            while not done():  # type: ignore[operator]  # noqa: ASYNC110 - the post steps
                await asyncio.sleep(0)
    finally:
        task.cancel()


def test_each_sink_gets_the_notice_once(tmp_path: Path) -> None:
    clock = ManualClock()
    a, b = Mailbox(clock, "a"), Mailbox(clock, "b")
    post, _ = post_for(tmp_path, clock, a=a, b=b)
    post.notice(notice())
    asyncio.run(until(post, lambda: a.notices and b.notices))
    assert [n.id for _, n in a.notices] == [n.id for _, n in b.notices] == [notice().id]
    assert post.status() == {"pending": 0, "delivered": {"alarm-off": 2}, "failed": 0}


def test_a_transient_failure_is_retried_after_its_backoff(tmp_path: Path) -> None:
    """Two 421s: tried again after the first pause (5 to 10 s) and the doubled one."""
    clock = ManualClock()
    mail = Mailbox(clock, "mail", failures=2)
    post, _ = post_for(tmp_path, clock, mail=mail)
    post.notice(notice())
    asyncio.run(until(post, lambda: mail.notices))
    first, second, third = mail.attempts
    assert 5.0 <= second - first <= 10.0
    assert 10.0 <= third - second <= 20.0
    assert post.pending == []


def test_a_permanent_failure_drops_the_notice_and_counts_it(tmp_path: Path) -> None:
    clock = ManualClock()
    good, bad = Mailbox(clock, "good"), Refusing(clock, "bad")
    post, _ = post_for(tmp_path, clock, good=good, bad=bad)
    post.notice(notice())
    asyncio.run(until(post, lambda: not post.pending))
    assert len(good.notices) == 1
    assert post.status()["failed"] == 1


def test_the_queue_is_bounded_oldest_dropped(tmp_path: Path) -> None:
    """A sink that never answers: MAX_PENDING notices wait, the oldest goes first."""
    clock = ManualClock()
    post, _ = post_for(tmp_path, clock, mail=Mailbox(clock))
    for n in range(MAX_PENDING + 3):
        post.notice(notice(n))
    assert len(post.pending) == MAX_PENDING
    assert post.pending[0].notice == notice(3)
    assert post.status()["failed"] == 3


def test_what_waits_is_kept_across_a_restart_and_a_removed_sink_loses_it(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    post, store = post_for(tmp_path, clock, mail=Mailbox(clock), gone=Mailbox(clock))
    post.notice(notice())
    assert store.commit()
    store.close()
    mail = Mailbox(clock)
    again, _ = post_for(tmp_path, clock, mail=mail)
    assert sorted(p.sink for p in again.pending) == ["gone", "mail"]
    asyncio.run(until(again, lambda: not again.pending))
    assert [n.id for _, n in mail.notices] == [notice().id]


def test_a_notice_passes_the_mail_cap_that_holds_a_digest(sockdir: Path) -> None:
    """The running daemon, one mail an hour: the first digest uses the hour up and the
    second waits, but an alarm-off raised meanwhile arrives at once."""
    cfg = make_config(sockdir, group_wait=1.0, group_interval=5.0, batch_window=0.0)
    cfg = replace(cfg, limits=replace(cfg.limits, mails_per_hour=1))
    clock = VirtualClock()

    async def scenario() -> tuple[list[float], list[float], float]:
        mail = Mailbox(clock)
        server = Server(cfg, sinks=[Built(mail, MAIL)], clock=clock)
        async with Running(server):
            send_refusals(cfg.daemon.socket)
            await mail.wait(1, within=30)
            send_refusals(cfg.daemon.socket, "192.0.2.2")
            await asyncio.sleep(60)  # its digest is due, and held by the cap
            raised = clock.now()
            server.alarm.report("tables", [PROBLEM])
            await mail.wait_notices(1, within=5)
            got = [at for at, _ in mail.got]
            notices = [at for at, _ in mail.notices]
        return got, notices, raised

    got, notices, raised = run(scenario())
    assert len(got) == 1  # the second digest still waits for the cap's hour
    (at,) = notices
    assert at - raised < 1.0
