"""Exactly once: the durable line's second copy of a refusal is dropped, and nothing else.

The memory on plain values (its window, its keys, its bounds), its save and restore
through the state database, then the running daemon: two copies over the socket, a
copy that waited in the spool across a restart, a local user's pre-sent identity, and
the race itself through real libwrap (a logger that is killed after it has sent).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    NOTIFY,
    PYTHON,
    Running,
    client,
    libwrap_available,
    make_config,
    require,
    spool_files,
)

from wrapalert import hostsdeny
from wrapalert.daemon import twins as twins_mod
from wrapalert.daemon.server import Server
from wrapalert.daemon.store import Store
from wrapalert.daemon.twins import KEEP, SAVE, Twins
from wrapalert.libwrap import LibWrap


def fields(hook: str = "4242", port: str = "50000", **more: str) -> dict[str, str]:
    """A report as the durable line's logger half sends it (no `t`)."""
    return {
        "daemon": "sshd",
        "daemon_pid": "4100",
        "client_addr": "203.0.113.7",
        "client_port": port,
        "hook_pid": hook,
        **more,
    }


def test_the_second_arrival_within_keep_is_a_copy() -> None:
    """The same identity from the same uid again, arriving within KEEP of the first, is a
    copy, however far apart the copies' own times (logger's waited in the queue); past
    KEEP it is a new refusal."""
    twins = Twins()
    assert not twins.copy(0, fields(), 100.0, trusted=True)
    assert twins.copy(0, fields(time="50.0"), 100.0 + KEEP - 1, trusted=True)
    assert not twins.copy(0, fields(), 100.0 + KEEP + 1, trusted=True)


@pytest.mark.parametrize(
    "other",
    [
        {"hook_pid": "4243"},
        {"client_port": "50001"},
        {"daemon_pid": "4101"},
        {"daemon": "in.fingerd"},
        {"client_addr": "203.0.113.8"},
    ],
)
def test_any_other_part_of_the_identity_makes_a_new_refusal(other: dict[str, str]) -> None:
    """Shell pid, client port, daemon pid, daemon and address each tell refusals apart."""
    twins = Twins()
    assert not twins.copy(0, fields(), 100.0, trusted=True)
    assert not twins.copy(0, fields() | other, 100.1, trusted=True)


def test_reports_without_an_identity_are_never_copies() -> None:
    """An older line's reports (no `i`) are each counted, however alike."""
    twins = Twins()
    plain = {"daemon": "sshd", "client_addr": "203.0.113.7"}
    assert not any(twins.copy(0, dict(plain), 100.0, trusted=True) for _ in range(3))


def test_another_uid_never_makes_a_copy_of_roots_report() -> None:
    """A local user who sends root's identity first only has its own report remembered:
    root's report that follows is no copy."""
    twins = Twins()
    assert not twins.copy(65534, fields(), 100.0, trusted=False)
    assert not twins.copy(0, fields(), 100.1, trusted=True)
    assert twins.copy(0, fields(), 100.2, trusted=True)


def test_the_memory_is_bounded_and_a_flood_of_strangers_keeps_roots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most MAX_KEPT identities per trust class, the oldest forgotten first; untrusted
    identities never push a trusted one out."""
    monkeypatch.setattr(twins_mod, "MAX_KEPT", 4)
    twins = Twins()
    twins.copy(0, fields("1"), 100.0, trusted=True)
    for i in range(100):
        twins.copy(65534, fields(str(1000 + i)), 100.0, trusted=False)
    assert len(twins.untrusted.seen) <= 4
    assert twins.copy(0, fields("1"), 100.5, trusted=True)  # root's still known
    for i in range(2, 7):
        twins.copy(0, fields(str(i)), 101.0, trusted=True)
    assert len(twins.trusted.seen) <= 4
    assert not twins.copy(0, fields("1"), 101.0, trusted=True)  # forgotten: counted


def test_trusted_identities_survive_a_restart_through_the_state_database(
    tmp_path: Path,
) -> None:
    """What a commit saves (the trusted identities of the last SAVE seconds) comes back at
    start, kept KEEP from then: the copy that waited through a long downtime in the spool
    is still known for one."""
    store = Store(tmp_path)
    store.open()
    twins = Twins()
    twins.copy(0, fields("0"), 100.0 - SAVE - 1, trusted=True)  # too old to save
    twins.copy(0, fields("1"), 100.0, trusted=True)
    twins.copy(65534, fields("2"), 100.0, trusted=False)  # memory only
    assert twins.dirty
    saved = twins.saved(100.5)
    assert [key[1] for key, _ in saved] == ["1"]
    store.stage_twins(saved)
    assert not twins.dirty
    assert store.commit()
    store.close()
    again = Store(tmp_path)
    again.open()
    restored = Twins()
    restored.restore(again.twins(), 3600.0)
    assert restored.copy(0, fields("1"), 3600.0 + KEEP - 1, trusted=True)
    assert not restored.copy(65534, fields("2"), 3600.0, trusted=False)


def test_a_damaged_saved_row_costs_only_the_recognition(tmp_path: Path) -> None:
    """A `twins` row that is not what we wrote reads as nothing saved."""
    store = Store(tmp_path)
    store.open()
    assert store.db is not None
    for damaged in ("{", "[[1, 2]]", '[["x", "1", "2", "d", "a", "r", 1.0]]', "5"):
        store.db.execute("INSERT OR REPLACE INTO meta VALUES ('twins', ?)", (damaged,))
        assert store.twins() == [], damaged


# -- the running daemon ------------------------------------------------------------------


def test_two_copies_over_the_socket_count_once(sockdir: Path) -> None:
    """The logger half's report and the client's copy of it (same `i`, the client's own
    `t`) make one event and one duplicate; a refusal without `i` sent twice is two."""
    cfg = make_config(sockdir)
    sock = f"socket={cfg.daemon.socket}"

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            for _ in range(2):
                await asyncio.to_thread(client, "d=sshd", "a=203.0.113.7", "p=41", "i=77", sock)
                await asyncio.to_thread(client, "d=sshd", "a=203.0.113.9", "p=42", sock)
            await wait_for(server, received=3, duplicates=1)
        return server

    status = asyncio.run(scenario()).status()
    assert (status["received"], status["duplicates"]) == (3, 1)


async def wait_for(server: Server, *, received: int, duplicates: int) -> None:
    async with asyncio.timeout(10):
        # The daemon's counters have no event to wait on: poll them, bounded.
        while (server.stats.received, server.stats.duplicates) < (received, duplicates):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_a_copy_spooled_while_the_daemon_stopped_counts_once(sockdir: Path) -> None:
    """The original reached the daemon, which then stopped (its socket gone); the copy the
    client spooled meanwhile is recognised at the next start, from the state database."""
    cfg = make_config(sockdir)
    words = ("d=sshd", "a=203.0.113.7", "p=41", "i=77", f"socket={cfg.daemon.socket}")

    async def first() -> None:
        server = Server(cfg)
        async with Running(server):
            await asyncio.to_thread(client, *words)
            await wait_for(server, received=1, duplicates=0)

    asyncio.run(first())
    client(*words, f"spool={cfg.daemon.spool_dir}")  # no socket now: into the spool
    assert len(spool_files(cfg.daemon.spool_dir)) == 1

    async def second() -> Server:
        server = Server(cfg)
        async with Running(server):
            await wait_for(server, received=1, duplicates=1)
        return server

    status = asyncio.run(second()).status()
    assert (status["received"], status["duplicates"], status["spooled"]) == (1, 1, 0)


@pytest.mark.system
def test_a_local_user_cannot_suppress_a_trusted_report(sockdir: Path) -> None:
    """uid 65534 sends the identity of root's next refusal first: root's report still
    counts, trusted; only the user's own report is its."""
    require(os.geteuid() == 0, "sending as another uid needs root (setpriv)")
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    cfg = make_config(sockdir)
    words = ("d=sshd", "a=203.0.113.7", "p=41", "i=77", f"socket={cfg.daemon.socket}")

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            await asyncio.to_thread(client, *words, user=65534)
            await asyncio.to_thread(client, *words)
            await wait_for(server, received=2, duplicates=0)
        return server

    status = asyncio.run(scenario()).status()
    assert (status["received"], status["untrusted"], status["duplicates"]) == (2, 1, 0)


STAND_IN = """#!/bin/sh
# util-linux logger, then a slow exit: `timeout` kills this after it has sent, as a
# loaded machine's scheduler does to a logger that sent but had not yet exited.
{logger} "$@"
exec sleep 5
"""


@pytest.mark.system
def test_a_logger_killed_after_sending_is_counted_once(tmp_path: Path, sockdir: Path) -> None:
    """The race itself, through real libwrap and the real durable line: logger sends, then
    `timeout` kills it, so `||` runs the client, which sends the same refusal again. The
    daemon counts one refusal and one duplicate (before `i=$$`: two refusals)."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    require(
        Path(hostsdeny.LOGGER).exists(), "util-linux logger is missing (apt-get install bsdutils)"
    )
    stand_in = tmp_path / "logger"
    stand_in.write_text(STAND_IN.format(logger=hostsdeny.LOGGER))
    stand_in.chmod(0o755)
    cfg = make_config(sockdir)
    line = hostsdeny.durable_line(
        PYTHON, Path(NOTIFY), logger=str(stand_in), socket=cfg.daemon.socket,
        spool=cfg.daemon.spool_dir, daemons="sshd",
    )  # fmt: skip
    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text(line + "\n")
    wrap = LibWrap(tmp_path / "hosts.allow", tmp_path / "hosts.deny")

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            for addr in ("203.0.113.7", "203.0.113.8"):
                assert not await asyncio.to_thread(wrap.allowed, "sshd", addr)
            await wait_for(server, received=2, duplicates=2)
            await asyncio.sleep(0.5)  # a third copy would be here by now
        return server

    status = asyncio.run(scenario()).status()
    assert (status["received"], status["duplicates"]) == (2, 2)
