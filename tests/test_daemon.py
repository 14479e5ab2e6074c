"""The daemon in-process against a real socket, real clients and a real Maildir."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from pathlib import Path

import pytest
from helpers import (
    Deliveries,
    Running,
    body,
    client,
    maildir_messages,
    make_config,
    require,
    send_datagrams,
    send_refusals,
    spool_files,
)

from wrapalert.daemon.server import Server
from wrapalert.wire import encode


def test_bad_datagrams_are_counted_by_reason_and_intake_goes_on(sockdir: Path) -> None:
    """Each kind of bad datagram is counted under its reason; a good one after them is accepted."""
    bad = {
        "bad_tag": b"WA9\nd=sshd\n",
        "not_utf8": b"WA1\nd=\xff\xfe\n",
        "too_large": b"WA1\nd=sshd\nc=" + b"x" * 5000 + b"\n",
        "missing_daemon": b"WA1\na=192.0.2.1\n",
        "bad_addr": b"WA1\nd=sshd\na=not-an-address\n",
        "control_char": b"WA1\nd=ss\x1bhd\n",
        "duplicate_key": b"WA1\nd=sshd\nd=ftpd\n",
        "bad_line": b"WA1\nd=sshd\njunk\n",
        "nul_byte": b"WA1\nd=ss\x00hd\n",
    }

    async def scenario() -> Server:
        seen = Deliveries()
        server = Server(make_config(sockdir), on_delivery=seen)
        async with Running(server):
            for data in bad.values():
                send_datagrams(server.cfg.daemon.socket, data)
            send_refusals(server.cfg.daemon.socket)
            await seen.wait_events(1)
        return server

    server = asyncio.run(scenario())
    status = server.status()
    assert status["rejected"] == dict.fromkeys(bad, 1)
    assert status["received"] == 1


@pytest.mark.system
def test_events_from_other_uids_are_marked_untrusted_and_kept_apart(sockdir: Path) -> None:
    """A report sent as uid 65534 gets its own group, marked untrusted, next to the real one."""
    require(os.geteuid() == 0, "sending as another uid needs root (setpriv)")

    async def scenario() -> Deliveries:
        seen = Deliveries()
        server = Server(make_config(sockdir, group_wait=1.0), on_delivery=seen)
        sock = f"socket={server.cfg.daemon.socket}"
        async with Running(server):
            await asyncio.to_thread(client, "d=sshd", "a=192.0.2.9", sock)
            await asyncio.to_thread(client, "d=sshd", "a=192.0.2.9", sock, user=65534)
            await seen.wait_events(2)
        return seen

    seen = asyncio.run(scenario())
    groups = [g for d in seen.digests for g in d.groups]
    assert sorted((g.trusted, g.uid) for g in groups) == [(False, 65534), (True, os.getuid())]
    maildir = sockdir / "Maildir"
    (msg,) = maildir_messages(maildir)
    text = body(msg)
    assert "reported by uid 65534, untrusted" in text


@pytest.mark.system
def test_an_untrusted_uid_cannot_exceed_its_budget(sockdir: Path) -> None:
    """Thirty varied reports from uid 65534 make one group; after its report, more from that
    uid wait for untrusted_interval while a trusted group reports again within seconds."""
    require(os.geteuid() == 0, "sending as another uid needs root (setpriv)")

    async def scenario() -> tuple[Deliveries, dict[str, object]]:
        seen = Deliveries()
        server = Server(make_config(sockdir, group_wait=60, group_interval=0.3), on_delivery=seen)
        sock = f"socket={server.cfg.daemon.socket}"
        async with Running(server):
            for i in range(30):
                await asyncio.to_thread(client, f"d=d{i % 7}", f"a=192.0.2.{i}", sock, user=65534)
            await asyncio.to_thread(client, "d=sshd", "a=192.0.2.200", sock)
            server.flush()
            await seen.wait_events(31)
            await asyncio.to_thread(client, "d=sshd", "a=192.0.2.99", sock, user=65534)
            await asyncio.to_thread(client, "d=sshd", "a=192.0.2.200", sock)
            await seen.wait_events(32)  # the trusted group's next report
            status = server.status()
        return seen, status

    seen, status = asyncio.run(scenario())
    first = {g.trusted: g for g in seen.digests[0].groups}
    assert (first[False].uid, first[False].events) == (65534, 30)
    assert first[True].events == 1
    assert [g.trusted for g in seen.digests[1].groups] == [True]
    assert status["pending_events"] == 1  # the untrusted report, waiting for its budget
    assert status["untrusted"] == 31


def test_spooled_events_are_ingested_at_start_and_removed(sockdir: Path) -> None:
    """Events the client spooled while the daemon was down are reported once it starts."""
    cfg = make_config(sockdir)
    spool = cfg.daemon.spool_dir
    spool.mkdir()
    for addr in ("192.0.2.1", "192.0.2.2"):
        client("d=sshd", f"a={addr}", f"socket={cfg.daemon.socket}", f"spool={spool}")
    assert len(list(spool.iterdir())) == 2

    async def scenario() -> tuple[Server, Deliveries]:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            await seen.wait_events(2)
        return server, seen

    server, seen = asyncio.run(scenario())
    assert server.stats.spooled == 2
    assert seen.events == 2
    assert spool_files(spool) == []


def test_spool_written_while_running_is_picked_up(sockdir: Path) -> None:
    """Clients that spool while the daemon runs (its queue was full) are not forgotten."""
    cfg = make_config(sockdir)

    async def scenario() -> Deliveries:
        seen = Deliveries()
        async with Running(Server(cfg, on_delivery=seen)):
            # A socket path nobody listens on makes the client spool, as a full queue would.
            await asyncio.to_thread(
                client,
                "d=sshd",
                "a=192.0.2.3",
                f"socket={sockdir}/elsewhere.sock",
                f"spool={cfg.daemon.spool_dir}",
            )
            await seen.wait_events(1)
        return seen

    assert asyncio.run(scenario()).events == 1


def test_spool_symlinks_and_oversized_files_are_rejected(sockdir: Path) -> None:
    """A symlink or an oversized file in the spool is counted as rejected, removed, not followed."""
    cfg = make_config(sockdir)
    spool = cfg.daemon.spool_dir
    spool.mkdir()
    secret = sockdir / "secret"
    secret.write_bytes(encode({"d": "sshd", "a": "192.0.2.1"}))
    (spool / "1.link.wa1").symlink_to(secret)
    (spool / "2.big.wa1").write_bytes(b"WA1\nd=sshd\n" + b"#" * 5000)

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            pass
        return server

    server = asyncio.run(scenario())
    assert server.stats.rejected["bad_spool_file"] == 2
    assert server.stats.received == 0
    assert spool_files(spool) == []
    assert secret.exists()


def test_a_live_daemon_socket_is_not_stolen(sockdir: Path) -> None:
    """A second daemon refuses to start on a socket a running one holds, and says why."""
    cfg = make_config(sockdir)

    async def scenario() -> None:
        async with Running(Server(cfg)):
            with pytest.raises(OSError, match="in use by a running daemon"):
                async with Running(Server(cfg)):
                    pass

    asyncio.run(scenario())


def test_a_stale_socket_file_is_replaced(sockdir: Path) -> None:
    """A socket file left by a crashed daemon (nobody reading) does not stop a new start."""
    cfg = make_config(sockdir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(cfg.daemon.socket))
    stale.close()

    async def scenario() -> Deliveries:
        seen = Deliveries()
        async with Running(Server(cfg, on_delivery=seen)):
            send_refusals(cfg.daemon.socket)
            await seen.wait_events(1)
        return seen

    assert asyncio.run(scenario()).events == 1


def test_junk_in_the_spool_neither_stops_nor_slows_the_daemon(sockdir: Path) -> None:
    """A directory (one that cannot be removed) and a stale half-written dot file in the
    world-writable spool: the daemon starts, counts the junk once, sweeps the dot file,
    and still ingests real spool files."""
    cfg = make_config(sockdir)
    spool = cfg.daemon.spool_dir
    (spool / "junk.d").mkdir(parents=True)
    (spool / "junk.d" / "keep").write_text("")  # non-empty: rmdir fails
    stale = spool / ".1.2.wa1"
    stale.write_text("")
    os.utime(stale, (0, 0))

    async def scenario() -> Server:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            await asyncio.sleep(0.5)  # two spool scans pass over the junk
            await asyncio.to_thread(
                client, "d=sshd", "a=192.0.2.1", f"socket={sockdir}/none.sock", f"spool={spool}"
            )
            await seen.wait_events(1)
        return server

    server = asyncio.run(scenario())
    assert server.stats.rejected["bad_spool_file"] == 1
    assert (spool / "junk.d").is_dir()
    assert not stale.exists()


def test_file_descriptors_passed_with_a_datagram_never_reach_the_daemon(sockdir: Path) -> None:
    """A sender can attach open files (SCM_RIGHTS); the control buffer has room for the
    credentials only, so the kernel discards them and the event still counts."""

    async def scenario() -> tuple[Server, int, int]:
        seen = Deliveries()
        server = Server(make_config(sockdir), on_delivery=seen)
        async with Running(server):
            before = open_fds()
            fd = os.open("/dev/null", os.O_RDONLY)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd] * 8))]
                    data = encode({"d": "sshd", "a": "192.0.2.1"})
                    s.sendmsg([data], rights, 0, str(server.cfg.daemon.socket))
                await seen.wait_events(1)
            finally:
                os.close(fd)
            after = open_fds()
        return server, before, after

    server, before, after = asyncio.run(scenario())
    assert after == before
    status = server.status()
    assert status["received"] == 1
    assert status["untrusted"] == 0  # the credentials were read all the same


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))
