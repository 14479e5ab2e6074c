"""End to end through real libwrap: hosts.deny line -> spawn -> client -> daemon -> mail."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import struct
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import (
    PYTHON,
    Deliveries,
    Running,
    SmtpServer,
    body,
    libwrap_available,
    make_config,
    receiver,
    require,
)

from wrapalert import hostsdeny, wire
from wrapalert.cli import hosts_deny_line
from wrapalert.daemon.server import Server
from wrapalert.libwrap import LibWrap
from wrapalert.model import Digest

pytestmark = pytest.mark.system

DAEMONS = ("sshd", "in.ftpd")
ADDRS = ("203.0.113.7", "::ffff:198.51.100.23")  # the second as a dual-stack listener reports it


@pytest.fixture(autouse=True)
def _libwrap() -> None:
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")


def tables(base: Path, line: str) -> LibWrap:
    allow, deny = base / "hosts.allow", base / "hosts.deny"
    allow.write_text("")
    deny.write_text(line + "\n")
    return LibWrap(allow, deny)


async def refuse(wrap: LibWrap, plan: dict[tuple[str, str], int]) -> None:
    """Ask libwrap about each connection in a thread, so the daemon keeps reading meanwhile."""
    for (daemon, addr), count in plan.items():
        for _ in range(count):
            allowed = await asyncio.to_thread(wrap.allowed, daemon, addr)
            assert not allowed, f"libwrap allowed {daemon} from {addr}"


def test_refusals_become_one_digest_with_exact_counts(sockdir: Path) -> None:
    """Refusals from two addresses to two daemons make one digest naming each with its count."""
    plan = {
        ("sshd", ADDRS[0]): 3,
        ("sshd", ADDRS[1]): 1,
        ("in.ftpd", ADDRS[0]): 2,
        ("in.ftpd", ADDRS[1]): 4,
    }

    async def scenario() -> tuple[list[EmailMessage], Server]:
        async with SmtpServer() as smtp:
            cfg = make_config(sockdir, smtp.sink(to=("root",)), group_wait=1.5)
            server = Server(cfg)
            task = asyncio.create_task(server.run(handle_signals=False))
            await server.ready.wait()
            await refuse(tables(sockdir, hosts_deny_line(cfg, PYTHON)), plan)
            await smtp.handler.wait(1)
            await asyncio.sleep(1.0)  # a second digest would be a failure: give it a chance
            server.stop()
            await task
            return [*smtp.handler.messages], server

    messages, server = asyncio.run(scenario())
    assert len(messages) == 1
    msg = messages[0]
    assert msg["X-Wrapalert-Events"] == "10"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert msg["X-Wrapalert-Held"] == "0"
    assert msg["X-Wrapalert-Host"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].strip().startswith("<")  # a long host name folds it
    text = body(msg)
    # One row per address, its total first, then each daemon with its own count.
    for addr in ADDRS:
        shown = addr.removeprefix("::ffff:")
        mine = {d: n for (d, a), n in plan.items() if a == addr}
        by_count = sorted(mine.items(), key=lambda kv: (-kv[1], kv[0]))
        daemons = ", ".join(f"{re.escape(d)} {n}" for d, n in by_count)
        row = rf"^{re.escape(shown)} +\S+ +{sum(mine.values())} \S+ +new +{daemons}$"
        assert re.search(row, text, re.MULTILINE), row
    html = body(msg, "html")
    for daemon in DAEMONS:
        assert daemon in html
    assert server.stats.received == 10
    assert server.stats.delivered["smtp"] == 1


def test_hook_carries_what_libwrap_expands(sockdir: Path) -> None:
    """The datagram carries libwrap's %d, %a, %n, %c, %s expansions and kernel credentials."""
    cfg = make_config(sockdir)
    wrap = tables(sockdir, hosts_deny_line(cfg, PYTHON))
    with receiver(cfg.daemon.socket) as sock:
        sock.settimeout(10)
        allowed = wrap.lib.hosts_ctl(b"vsftpd", b"evil.example", b"192.0.2.1", b"unknown")
        data, anc, _, _ = sock.recvmsg(8192, socket.CMSG_SPACE(12))
    assert allowed == 0
    fields = wire.parse(data)
    assert fields["daemon"] == "vsftpd"
    assert fields["client_addr"] == "192.0.2.1"
    assert fields["client_name"] == "evil.example"
    assert fields["client"] == "evil.example"
    assert fields["server"] == "vsftpd"  # hosts_ctl knows no server host, so %s is just %d
    assert "user" not in fields  # no %u without --ident: no IDENT delay
    ((_, _, creds),) = anc
    pid, uid, _gid = struct.unpack("iII", creds)
    assert pid > 0
    assert uid == os.getuid()


def test_every_refusal_of_a_burst_is_counted(sockdir: Path) -> None:
    """A burst of 60 refusals through libwrap is reported in full, however it is split."""
    plan = {(d, a): 15 for d in DAEMONS for a in ADDRS}
    expected = sum(plan.values())

    async def scenario() -> int:
        cfg = make_config(sockdir, group_wait=1.0)
        delivered = 0
        done = asyncio.Event()

        def count(_sink: str, digest: Digest, _error: Exception | None) -> None:
            nonlocal delivered
            delivered += digest.events
            if delivered >= expected:
                done.set()

        server = Server(cfg, on_delivery=count)
        task = asyncio.create_task(server.run(handle_signals=False))
        await server.ready.wait()
        await refuse(tables(sockdir, hosts_deny_line(cfg, PYTHON)), plan)
        async with asyncio.timeout(20):
            await done.wait()
        server.stop()
        await task
        return delivered

    assert asyncio.run(scenario()) == expected


def test_the_logger_line_carries_the_same_event(sockdir: Path) -> None:
    """`hosts-deny-line --logger`: libwrap runs util-linux logger, whose syslog datagram
    the daemon's parser reads as the same fields the Python client would send."""
    logger = shutil.which("logger")
    require(logger is not None, "util-linux logger is not installed (apt-get install bsdutils)")
    assert logger is not None
    cfg = make_config(sockdir)
    line = hostsdeny.logger_line(logger, cfg.daemon.socket)
    wrap = tables(sockdir, line)
    with receiver(cfg.daemon.socket) as sock:
        sock.settimeout(10)
        allowed = wrap.lib.hosts_ctl(b"vsftpd", b"evil.example", b"::ffff:192.0.2.1", b"unknown")
        data, anc, _, _ = sock.recvmsg(8192, socket.CMSG_SPACE(12))
    assert allowed == 0
    assert data.startswith(b"<")  # a syslog line, not a WA1 datagram
    fields = wire.parse(data)
    assert fields["daemon"] == "vsftpd"
    assert fields["client_addr"] == "192.0.2.1"
    assert fields["client_name"] == "evil.example"
    assert fields["server"] == "vsftpd"
    assert "time" not in fields  # the daemon stamps it on arrival
    ((_, _, creds),) = anc
    assert struct.unpack("iII", creds)[1] == os.getuid()  # trust works as for the client


def test_the_logger_line_reaches_the_running_daemon(sockdir: Path) -> None:
    logger = shutil.which("logger")
    require(logger is not None, "util-linux logger is not installed (apt-get install bsdutils)")
    assert logger is not None
    plan = {("sshd", ADDRS[0]): 3, ("in.ftpd", ADDRS[1]): 2}

    async def scenario() -> Server:
        seen = Deliveries()
        cfg = make_config(sockdir, group_wait=0.5)
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            await refuse(tables(sockdir, hostsdeny.logger_line(logger, cfg.daemon.socket)), plan)
            await seen.wait_events(5)
        return server

    server = asyncio.run(scenario())
    status = server.status()
    assert (status["received"], status["untrusted"], status["rejected"]) == (5, 0, {})
