"""The running daemon's timers on virtual time: group_wait, group_interval, repeat, the
mail cap, retries and reload, each exact to the virtual second, in milliseconds of real time.

Events go in as real datagrams on the daemon's real socket, sent from inside the
loop (instant), and digests come out through the real delivery workers into a
recording sink: the whole daemon runs, only the clock is virtual (tests/timing.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from helpers import Mailbox, Running, event, make_config, send_refusals
from timing import VirtualClock, run

from wrapalert import config
from wrapalert.daemon.server import Server
from wrapalert.model import Digest
from wrapalert.sinks.base import DIGESTS, Built
from wrapalert.sinks.jsonl import JsonlSinkConfig
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.sinks.nftables import NftablesSinkConfig

SLACK = 0.05  # virtual seconds: the loop's idle threshold and the commit tick


def timing_config(base: Path, **digest: Any) -> config.Config:
    cfg = make_config(base, group_wait=10.0, group_interval=300.0, batch_window=0.0)
    # Periodic chores at their usual pace: each tick is a loop pass, hours are many passes.
    daemon = replace(cfg.daemon, commit_interval=1.0, spool_scan_interval=60.0)
    return replace(
        cfg,
        daemon=daemon,
        digest=replace(cfg.digest, **digest),
        limits=replace(cfg.limits, mails_per_hour=0, retry_min=1.0, retry_max=60.0),
    )


def test_first_digest_waits_exactly_group_wait(sockdir: Path) -> None:
    """A new group's first digest goes out group_wait after its first event, not sooner,
    and carries every event that came meanwhile."""
    cfg = timing_config(sockdir, group_wait=30.0)
    clock = VirtualClock()

    async def scenario() -> tuple[float, list[tuple[float, Digest]]]:
        mail = Mailbox(clock)
        async with Running(Server(cfg, sinks=[Built(mail, DIGESTS)], clock=clock)):
            start = clock.now()
            send_refusals(cfg.daemon.socket)
            await asyncio.sleep(20)
            send_refusals(cfg.daemon.socket, count=2)
            await mail.wait(1, within=60)
        return start, mail.got

    start, got = run(scenario())
    ((at, digest),) = got
    assert 30.0 - SLACK <= at - start <= 30.0 + SLACK
    assert digest.events == 3


def test_later_activity_waits_for_group_interval(sockdir: Path) -> None:
    """After its first digest, a group's new activity goes out group_interval after that
    digest, however early it arrives."""
    cfg = timing_config(sockdir, group_wait=5.0, group_interval=120.0)
    clock = VirtualClock()

    async def scenario() -> list[tuple[float, Digest]]:
        mail = Mailbox(clock)
        async with Running(Server(cfg, sinks=[Built(mail, DIGESTS)], clock=clock)):
            send_refusals(cfg.daemon.socket)
            await mail.wait(1, within=30)
            await asyncio.sleep(1)
            send_refusals(cfg.daemon.socket, count=4)
            await mail.wait(2, within=300)
        return mail.got

    (first, one), (second, two) = run(scenario())
    assert 120.0 - SLACK <= second - first <= 120.0 + SLACK
    assert (one.events, two.events) == (1, 4)


def test_a_quiet_group_is_repeated_once_after_repeat_interval(sockdir: Path) -> None:
    """A group with no news is reported once more, with no new events, repeat_interval
    after its last report, and then forgotten."""
    cfg = timing_config(sockdir, group_wait=5.0, group_interval=60.0, repeat_interval=3600.0)
    clock = VirtualClock()

    async def scenario() -> tuple[list[tuple[float, Digest]], int]:
        mail = Mailbox(clock)
        server = Server(cfg, sinks=[Built(mail, DIGESTS)], clock=clock)
        async with Running(server):
            send_refusals(cfg.daemon.socket, count=2)
            await mail.wait(2, within=4000)
            await asyncio.sleep(4 * 3600)  # nothing more comes
            groups = len(server.runtime.aggregator.groups)
        return mail.got, groups

    got, groups = run(scenario())
    (first, one), (second, repeat) = got
    assert 3600.0 - SLACK <= second - first <= 3600.0 + SLACK
    assert one.events == 2
    assert repeat.events == 0
    assert repeat.groups[0].reason == "repeat"
    assert groups == 0


def test_the_mail_cap_holds_digests_for_the_hour_and_loses_none(sockdir: Path) -> None:
    """With mails_per_hour = 2, the third digest of the hour waits until the first mail
    is an hour old and carries every event held meanwhile."""
    cfg = timing_config(sockdir, group_wait=1.0, group_interval=60.0)
    cfg = replace(cfg, limits=replace(cfg.limits, mails_per_hour=2))
    clock = VirtualClock()

    async def scenario() -> list[tuple[float, Digest]]:
        mail = Mailbox(clock)
        async with Running(Server(cfg, sinks=[Built(mail, DIGESTS)], clock=clock)):
            for i in range(6):  # a new source every ten minutes
                send_refusals(cfg.daemon.socket, addr=f"192.0.2.{i + 1}")
                await asyncio.sleep(600)
            await mail.wait(3, within=7200)
        return mail.got

    got = run(scenario())
    times = [t for t, _ in got]
    assert len(times) == 3
    assert times[2] - times[0] >= 3600.0 - SLACK  # never a third mail within the hour
    assert sum(d.events for _, d in got) == 6
    assert got[2][1].held == 4


def test_transient_failures_are_retried_on_the_backoff(sockdir: Path) -> None:
    """Three transient failures are retried after pauses of about 1, 2 and 4 s (jittered
    down by at most half); the fourth attempt delivers once."""
    cfg = timing_config(sockdir, group_wait=1.0)
    clock = VirtualClock()

    async def scenario() -> Mailbox:
        mail = Mailbox(clock, failures=3)
        async with Running(Server(cfg, sinks=[Built(mail, DIGESTS)], clock=clock)):
            send_refusals(cfg.daemon.socket)
            await mail.wait(1, within=60)
        return mail

    mail = run(scenario())
    pauses = [b - a for a, b in zip(mail.attempts, mail.attempts[1:], strict=False)]
    assert len(mail.got) == 1
    assert len(pauses) == 3
    for pause, base in zip(pauses, (1.0, 2.0, 4.0), strict=True):
        assert base / 2 - SLACK <= pause <= base + SLACK


def test_reload_hands_groups_and_forwarding_to_the_new_pipeline(sockdir: Path) -> None:
    """A reload while a group waits keeps it (one digest, every event, on its old timer),
    and the new pipeline forwards to the forwarding sink of the new config."""
    cfg = timing_config(sockdir, group_wait=30.0)
    jsonl = JsonlSinkConfig(name="records", path=sockdir / "events.jsonl")
    cfg = replace(cfg, sinks=(*cfg.sinks, jsonl))
    clock = VirtualClock()
    delivered: list[tuple[float, Digest]] = []

    async def scenario() -> float:
        server = Server(
            cfg, clock=clock, on_delivery=lambda _s, d, _e: delivered.append((clock.now(), d))
        )
        async with Running(server):
            start = clock.now()
            send_refusals(cfg.daemon.socket, count=2)
            await asyncio.sleep(10)
            server.apply(replace(cfg, limits=replace(cfg.limits, events_per_second=50.0)))
            assert server.runtime.sinks.forwarders["records"].bucket.rate == 50.0
            send_refusals(cfg.daemon.socket, count=3)
            await asyncio.sleep(25)
        return start

    start = run(scenario())
    ((_, digest),) = delivered
    assert 30.0 - SLACK <= digest.created - start <= 30.0 + SLACK
    assert digest.events == 5
    lines = (sockdir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["event"] * 5


def test_a_repeat_offenders_bans_grow_as_the_running_daemon_expires_them(sockdir: Path) -> None:
    """On virtual time, the whole daemon (a dry-run nftables sink: no kernel): three
    verified refusals ban a source for ban_for (1 h); the book's own timer ends it at
    1 h (also a dry-run ban's: the book once slept past it until something woke it); the
    next three ban it for 2 h, its 2nd ban, ended at 2 h; then 4 h. Refusals while a ban
    holds are not counted (the stage's settled targets)."""
    nft = NftablesSinkConfig(mode="dry-run", threshold=3, ban_for=3600.0)
    cfg = make_config(sockdir, MaildirSinkConfig(path=sockdir / "Maildir"), nft)
    clock = VirtualClock()

    async def scenario() -> list[tuple[int, float, int]]:
        server = Server(cfg, clock=clock)
        made: list[tuple[int, float, int]] = []
        async with Running(server):
            for _ in range(3):
                start = clock.now()
                for _ in range(6):  # three count; three more while banned do not
                    server.reloader.accept(
                        event(addr="203.0.113.7", at=clock.now(), transport="tcp")
                    )
                (ban,) = server.bans.in_force()
                made.append((ban.nth, ban.until - ban.since, round(ban.since - start)))
                await asyncio.sleep(ban.until - clock.now() - 1)
                for _ in range(3):
                    if not server.bans.policy.active:  # the book's timer, not ours, ends it
                        break
                    await asyncio.sleep(1)
                assert ban.until <= clock.now() <= ban.until + 1 + SLACK
        return made

    made = run(scenario())
    assert made == [(1, 3600.0, 0), (2, 7200.0, 0), (3, 14400.0, 0)]
