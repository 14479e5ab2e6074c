"""The daemon's composition root and lifecycle shell (daemon/server.py): parts started in
order on one exit stack and stopped in reverse, also when a start fails half way."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from wrapalert import config
from wrapalert.daemon.server import Server
from wrapalert.daemon.store import Store
from wrapalert.model import Digest
from wrapalert.sinks.base import DIGESTS, Built
from wrapalert.wire import encode


class Mailbox:
    name = "mail"

    def __init__(self) -> None:
        self.digests: list[Digest] = []

    async def send(self, digest: Digest) -> None:
        self.digests.append(digest)


def settings(base: Path) -> config.Config:
    return config.loads(f"""
[daemon]
socket = "{base}/notify.sock"
control_socket = "{base}/control.sock"
state_dir = "{base}/state"
spool_dir = "{base}/spool"
[digest]
group_wait = "1h"
[hook]
watch = false  # this host's /etc/hosts.deny is not the test's business
[[sink]]
type = "maildir"
path = "{base}/Maildir"
""")


def test_parts_start_in_order_and_stop_in_reverse(sockdir: Path) -> None:
    """Running: both sockets are there. Stopping: the control socket goes first, then the
    socket is closed to new senders and what it queued is read, the spool is read once
    more, every group is flushed and delivered, then the state is committed and closed."""
    cfg = settings(sockdir)
    mailbox = Mailbox()
    server = Server(cfg, sinks=[Built(mailbox, DIGESTS)])

    async def scenario() -> tuple[bool, bool]:
        task = asyncio.create_task(server.run(handle_signals=False))
        await server.ready.wait()
        sockets = cfg.daemon.socket.exists(), cfg.daemon.control_socket.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(encode({"d": "sshd", "a": "192.0.2.1"}), str(cfg.daemon.socket))
        server.stop()  # read by the reader or the shutdown's drain: flushed either way
        await task
        return sockets

    with capture_logs() as logs:
        running = asyncio.run(scenario())
    assert running == (True, True)
    assert not cfg.daemon.socket.exists()
    assert not cfg.daemon.control_socket.exists()
    (digest,) = mailbox.digests  # group_wait is an hour: only the shutdown flush sent it
    assert [(g.reason, g.events) for g in digest.groups] == [("shutdown flush", 1)]
    events = [e["event"] for e in logs]
    order = ["ready", "stopping", "digest", "delivered", "stopped"]
    assert [e for e in events if e in order] == order
    assert server.store.db is None
    store = Store(cfg.daemon.state_dir)
    store.open()
    assert store.load().counters["received"] == 1  # the last commit came before the close


def test_a_start_that_fails_half_way_stops_what_it_started(sockdir: Path) -> None:
    """A notify socket another daemon reads: the start fails with that error, after the
    state database was opened; the exit stack closes it and nothing else was made."""
    cfg = settings(sockdir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as taken:
        taken.bind(str(cfg.daemon.socket))
        server = Server(cfg)
        with pytest.raises(OSError, match="in use by a running daemon"):
            asyncio.run(server.run(handle_signals=False))
    assert server.store.db is None
    assert (cfg.daemon.state_dir / "state.db").exists()
    assert not cfg.daemon.control_socket.exists()
    assert not server.ready.is_set()
