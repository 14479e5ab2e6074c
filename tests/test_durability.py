"""Nothing lost: crashes, restarts, mail outages and reloads, against real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import timing
from aiosmtpd.controller import Controller
from helpers import (
    WRAPALERT,
    DaemonProcess,
    Deliveries,
    Handler,
    Running,
    SmtpServer,
    client,
    free_port,
    maildir_messages,
    make_config,
    send_refusals,
    spool_files,
    wait_until,
    write_config,
)
from timing import VirtualClock

from wrapalert import config
from wrapalert.daemon.ledger import COMMIT_EVERY
from wrapalert.daemon.server import Server
from wrapalert.daemon.store import Store
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.wire import encode

FAST = """
[limits]
mails_per_hour = 0
retry_min = "50ms"
retry_max = "200ms"
"""


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(sockdir, write_config(sockdir, group_wait="300ms", extra=FAST))
    yield proc
    proc.close()


def send_all(sock_path: Path, payloads: list[bytes]) -> None:
    """Send every payload, waiting (briefly, repeatedly) whenever the queue is full."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for data in payloads:
            while True:
                try:
                    s.sendto(data, str(sock_path))
                    break
                except BlockingIOError:
                    threading.Event().wait(0.0005)


def events_by_message_id(maildir: Path) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for msg in maildir_messages(maildir):
        seen[msg["Message-ID"]].append(int(msg["X-Wrapalert-Events"]))
    return seen


def settled(daemon: DaemonProcess) -> bool:
    status = daemon.status()
    return bool(status["pending_events"] == 0 and status["outbox"] == 0)


def test_pending_groups_survive_sigkill(daemon: DaemonProcess, sockdir: Path) -> None:
    """Events waiting in a group when the daemon is killed are reported after the restart."""
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace('group_wait = "300ms"', 'group_wait = "1h"')
    )
    daemon.start()
    for addr in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        client("d=sshd", f"a={addr}", f"socket={sockdir}/notify.sock")
    # Killed once all three are in the state database (waiting for "one more commit" after
    # seeing them pending hung when that commit had come first: nothing was left to commit).
    wait_until(lambda: committed_events(sockdir) == 3, what="3 events committed")
    assert daemon.status()["pending_events"] == 3
    daemon.kill()
    daemon.start()
    status = daemon.status()
    assert (status["received"], status["pending_events"], status["groups"]) == (3, 3, 2)
    daemon.stop()  # SIGTERM flushes
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Events"] == "3"


def committed_events(sockdir: Path) -> int:
    """The events of the groups in the state database: what a restart would find."""
    try:
        db = sqlite3.connect(f"file:{sockdir / 'state' / 'state.db'}?mode=ro", uri=True)
        with contextlib.closing(db):
            rows = db.execute("SELECT state FROM groups").fetchall()
    except sqlite3.OperationalError:  # not made yet
        return 0
    return sum(json.loads(state)["total"] for (state,) in rows)


@pytest.mark.system  # minutes: twenty daemons killed under load, about five seconds each
@pytest.mark.parametrize("trial", range(20))
def test_sigkill_under_load_loses_only_uncommitted_and_counts_once(
    daemon: DaemonProcess, sockdir: Path, trial: int
) -> None:
    """Killed at a random moment under 50,000 events, the daemon restarts and reports every
    committed event in exactly one digest; duplicates carry the same Message-ID."""
    rng = random.Random(trial)  # noqa: S311 - reproducible test timing, not crypto
    payloads = [
        encode({"d": rng.choice(("sshd", "vsftpd")), "a": f"198.51.100.{i % 97}"})
        for i in range(50_000)
    ]
    daemon.start()
    sender = threading.Thread(target=send_all, args=(sockdir / "notify.sock", payloads))
    sender.start()
    threading.Event().wait(rng.uniform(0.0, 1.5))
    daemon.kill()
    daemon.start()
    sender.join(timeout=120)
    assert not sender.is_alive()
    wait_until(
        lambda: daemon.status()["received"] >= 50_000 - COMMIT_EVERY and settled(daemon),
        timeout=60,
        what="the daemon to catch up",
    )
    received = daemon.status()["received"]
    assert daemon.stop() == 0
    mails = events_by_message_id(sockdir / "Maildir")
    for message_id, counts in mails.items():
        assert len(set(counts)) == 1, f"{message_id} re-sent with different contents"
    assert sum(counts[0] for counts in mails.values()) == received
    assert 50_000 - COMMIT_EVERY <= received <= 50_000


def smtp_sink(port: int) -> str:
    return (
        f'[[sink]]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
        'timeout = "500ms"\nto = ["root"]\n'
    )


def in_process(sockdir: Path, port: int, extra: str = FAST) -> Server:
    """The daemon in this event loop, on virtual time (run it with timing.run)."""
    path = write_config(sockdir, group_wait="200ms", extra=extra, sinks=smtp_sink(port))
    return Server(config.load(path), config_path=path, clock=VirtualClock())


@pytest.mark.parametrize(
    "fault", ["421 4.3.2 shutting down", "451 4.3.0 try again", "drop", "stall"]
)
def test_transient_smtp_faults_end_in_one_delivery(sockdir: Path, fault: str) -> None:
    """A 421, a 451, a connection cut mid-DATA or a server that stalls is retried; the
    digest then arrives exactly once."""

    async def scenario() -> tuple[SmtpServer, dict[str, Any]]:
        async with SmtpServer() as smtp:
            smtp.handler.faults = [fault, fault]
            server = in_process(sockdir, smtp.port)
            async with Running(server):
                send_refusals(server.cfg.daemon.socket, count=3)
                await smtp.handler.wait(1)
                await wait_for_status(server, lambda s: s["outbox"] == 0)
                status = server.status()
            return smtp, status

    smtp, status = timing.run(scenario())
    assert smtp.handler.attempts == 3
    (msg,) = smtp.handler.messages
    assert msg["X-Wrapalert-Events"] == "3"
    assert status["sinks"]["smtp"]["delivered"] == 1
    assert status["sinks"]["smtp"]["failed"] == 0


def test_refused_connection_is_retried_until_the_server_starts(sockdir: Path) -> None:
    """With no SMTP server listening, the digest waits and goes out once one starts."""
    port = free_port()

    async def scenario() -> SmtpServer:
        server = in_process(sockdir, port)
        async with Running(server):
            send_refusals(server.cfg.daemon.socket, count=2)
            await wait_for_status(server, lambda s: s["sinks"]["smtp"]["last_error"] is not None)
            async with SmtpServer(port) as smtp:
                await smtp.handler.wait(1)
            return smtp

    (msg,) = timing.run(scenario()).handler.messages
    assert msg["X-Wrapalert-Events"] == "2"


def test_permanent_failure_is_shown_and_retried_after_reload(sockdir: Path) -> None:
    """A 554 is not retried, shows in status, and is sent again after a reload."""

    async def scenario() -> tuple[dict[str, Any], SmtpServer]:
        async with SmtpServer() as smtp:
            smtp.handler.reply = "554 5.7.1 policy"
            server = in_process(sockdir, smtp.port)
            async with Running(server):
                send_refusals(server.cfg.daemon.socket, count=4)
                await wait_for_status(server, lambda s: s["sinks"]["smtp"]["held_failed"] == 1)
                failed = server.status()
                attempts = smtp.handler.attempts
                await asyncio.sleep(0.5)  # retries would show here: there must be none
                assert smtp.handler.attempts == attempts
                smtp.handler.reply = "250 OK"
                assert server.reload()
                await smtp.handler.wait(1)
            return failed, smtp

    failed, smtp = timing.run(scenario())
    sink = failed["sinks"]["smtp"]
    assert (sink["failed"], sink["held_failed"], failed["outbox"]) == (1, 1, 1)
    assert "554" in sink["last_error"]
    (msg,) = smtp.handler.messages
    assert msg["X-Wrapalert-Events"] == "4"


def test_a_long_mail_outage_loses_nothing(sockdir: Path) -> None:
    """Events spread over ten group intervals while the MTA is down all arrive once it is back."""
    port = free_port()

    async def scenario() -> tuple[int, SmtpServer]:
        path = write_config(sockdir, group_wait="100ms", extra=FAST, sinks=smtp_sink(port))
        text = path.read_text().replace('group_interval = "2s"', 'group_interval = "200ms"')
        path.write_text(text)
        server = Server(config.load(path), config_path=path, clock=VirtualClock())
        sent = 0
        async with Running(server):
            for wave in range(10):
                send_refusals(server.cfg.daemon.socket, f"192.0.2.{wave % 3}", count=wave + 1)
                sent += wave + 1
                await asyncio.sleep(0.2)
            await wait_for_status(server, lambda s: s["pending_events"] == 0)
            async with SmtpServer(port) as smtp:
                await wait_for_status(server, lambda s: s["outbox"] == 0, timeout=20)
        return sent, smtp

    sent, smtp = timing.run(scenario())
    assert sum(int(m["X-Wrapalert-Events"]) for m in smtp.handler.messages) == sent


def test_bad_reload_keeps_the_old_config(sockdir: Path) -> None:
    """A reload with a broken file is refused; the daemon keeps working on the old config."""

    async def scenario() -> SmtpServer:
        async with SmtpServer() as smtp:
            server = in_process(sockdir, smtp.port)
            async with Running(server):
                assert server.config_path is not None
                server.config_path.write_text("[digest]\ngroup_wait = 'soon'\n")
                assert not server.reload()
                send_refusals(server.cfg.daemon.socket)
                await smtp.handler.wait(1)
            return smtp

    assert len(timing.run(scenario()).handler.messages) == 1


def test_reload_adds_a_sink(sockdir: Path) -> None:
    """A sink added to the file receives the next digest after a reload."""

    async def scenario() -> None:
        async with SmtpServer() as smtp:
            server = in_process(sockdir, smtp.port)
            async with Running(server):
                assert server.config_path is not None
                with server.config_path.open("a") as f:
                    f.write(f'\n[[sink]]\ntype = "maildir"\npath = "{sockdir}/Maildir"\n')
                assert server.reload()
                send_refusals(server.cfg.daemon.socket, count=2)
                await smtp.handler.wait(1)
                await wait_for_status(server, lambda s: s["outbox"] == 0)

    timing.run(scenario())
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Events"] == "2"


def test_unwritable_state_dir_runs_in_memory_and_says_so(sockdir: Path) -> None:
    """With state_dir unusable, events are still reported and status names the problem."""
    cfg = make_config(sockdir)
    cfg.daemon.state_dir.write_text("a file where the state directory should be")

    async def scenario() -> dict[str, Any]:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            client("d=sshd", "a=192.0.2.1", f"socket={cfg.daemon.socket}")
            await seen.wait_events(1)
            return server.status()

    status = asyncio.run(scenario())
    state = status["state"]
    assert state["ok"] is False
    assert str(cfg.daemon.state_dir) in state["error"]
    assert status["received"] == 1


def test_damaged_state_is_moved_aside_and_reported(sockdir: Path) -> None:
    """A damaged state.db is kept aside, named in status, and the daemon starts afresh."""
    cfg = make_config(sockdir)
    cfg.daemon.state_dir.mkdir()
    (cfg.daemon.state_dir / "state.db").write_bytes(b"\x00garbage" * 512)

    async def scenario() -> dict[str, Any]:
        server = Server(cfg)
        async with Running(server):
            return server.status()

    state = asyncio.run(scenario())["state"]
    assert state["ok"] is True
    moved = Path(state["moved_aside"])
    assert moved.read_bytes().startswith(b"\x00garbage")


def test_newer_state_stops_the_start_with_a_clear_error(sockdir: Path) -> None:
    """`wrapalert run` on a state.db from a newer version exits 1 and says why."""
    path = write_config(sockdir)
    (sockdir / "state").mkdir()
    db = sqlite3.connect(sockdir / "state" / "state.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    result = subprocess.run(
        [WRAPALERT, "run", "-c", str(path)], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 1
    assert "schema version 99, newer than this wrapalert's" in result.stderr


def test_spool_files_counted_before_a_crash_are_not_counted_again(sockdir: Path) -> None:
    """A spool file whose events were committed but which a crash left behind is removed
    at the next start, not counted twice."""
    cfg = make_config(sockdir)
    spool = cfg.daemon.spool_dir
    spool.mkdir()
    client("d=sshd", "a=192.0.2.1", f"socket={sockdir}/absent.sock", f"spool={spool}")
    client("d=sshd", "a=192.0.2.2", f"socket={sockdir}/absent.sock", f"spool={spool}")
    first, second = sorted(p.name for p in spool.iterdir())
    store = Store(cfg.daemon.state_dir)
    store.open()
    store.stage_spool_seen([first])  # as if the last run committed it, then died
    assert store.commit()
    store.close()

    async def scenario() -> Server:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            await seen.wait_events(1)
        return server

    server = asyncio.run(scenario())
    assert server.stats.received == 1
    assert spool_files(spool) == []
    assert second  # the other file was the one counted


def test_reload_signal_speaks_sd_notify(daemon: DaemonProcess) -> None:
    """SIGHUP sends RELOADING=1 with MONOTONIC_USEC, then READY=1 once applied."""
    daemon.start()
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    daemon.wait_for("READY=1")
    assert daemon.stop() == 0


def test_watchdog_is_fed_when_systemd_asks(daemon: DaemonProcess) -> None:
    """With WATCHDOG_USEC set, the daemon sends WATCHDOG=1 at least every half interval."""
    daemon.start(env={"WATCHDOG_USEC": "400000"})
    daemon.wait_for("WATCHDOG=1")
    daemon.wait_for("WATCHDOG=1")
    assert daemon.stop() == 0


def test_status_and_flush_commands(daemon: DaemonProcess, sockdir: Path) -> None:
    """`wrapalert status --json` has DESIGN.md's keys; `wrapalert flush` sends pending now."""
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace('group_wait = "300ms"', 'group_wait = "1h"')
    )
    daemon.start()
    client("d=sshd", "a=192.0.2.1", f"socket={sockdir}/notify.sock")
    wait_until(lambda: daemon.status()["pending_events"] == 1, what="the event")
    cfg = str(daemon.config_path)
    status = subprocess.run(
        [WRAPALERT, "status", "--json", "-c", cfg],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(status.stdout)
    assert {
        "received",
        "rejected",
        "untrusted",
        "spooled",
        "groups",
        "pending_events",
        "outbox",
        "sinks",
    } <= data.keys()
    assert set(data["sinks"]["maildir"]) >= {"delivered", "failed"}
    flushed = subprocess.run(
        [WRAPALERT, "flush", "-c", cfg], capture_output=True, text=True, check=True, timeout=30
    )
    assert "flushed: 1 event, queued as a digest" in flushed.stdout
    wait_until(lambda: len(maildir_messages(sockdir / "Maildir")) == 1, what="the digest")
    human = subprocess.run(
        [WRAPALERT, "status", "-c", cfg], capture_output=True, text=True, check=True, timeout=30
    )
    assert "sink maildir: delivered 1 (1 event)" in human.stdout


def test_status_without_a_daemon_says_so(sockdir: Path) -> None:
    """`wrapalert status` with no daemon running exits 1 and says it is not running."""
    result = subprocess.run(
        [WRAPALERT, "status", "-c", str(write_config(sockdir))],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "wrapalert is not running" in result.stderr


async def wait_for_status(
    server: Server, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> None:
    """Wait for the in-process daemon's status to satisfy `condition` (bounded)."""
    async with asyncio.timeout(timeout):
        while not condition(server.status()):  # noqa: ASYNC110 - status has no change signal
            await asyncio.sleep(0.02)


def test_a_full_disk_leaves_the_daemon_running_in_memory(
    daemon: DaemonProcess, sockdir: Path
) -> None:
    """When the state database can no longer grow (file size limit, as on a full disk), the
    daemon keeps reporting events from memory and status says why."""
    daemon.start(prefix=("prlimit", f"--fsize={64 * 1024}", "--"))
    sent = 0
    for wave in range(40):
        for i in range(5):
            client("d=sshd", f"a=10.{wave}.{i}.1", f"socket={sockdir}/notify.sock")
            sent += 1
        if not daemon.status()["state"]["ok"]:
            break
    status = daemon.status()
    assert status["state"]["ok"] is False, "the limit was never hit: raise the waves"
    assert "full" in status["state"]["error"] or "disk" in status["state"]["error"]
    assert daemon.stop() == 0  # SIGTERM still flushes from memory
    delivered = sum(int(m["X-Wrapalert-Events"]) for m in maildir_messages(sockdir / "Maildir"))
    assert delivered == sent


def test_a_stuck_sink_does_not_stop_shutdown_and_is_delivered_next_start(
    daemon: DaemonProcess, sockdir: Path
) -> None:
    """SIGTERM ends within the grace period though the MTA hangs; the digest stays in the
    outbox and the next start delivers it with the same Message-ID."""
    hole = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = hole.getsockname()[1]
    daemon.config_path.write_text(
        daemon.config_path.read_text()
        .replace(
            f'[[sink]]\ntype = "maildir"\npath = "{sockdir}/Maildir"\n',
            smtp_sink(port).replace('timeout = "500ms"', 'timeout = "1h"'),
        )
        .replace(
            'spool_scan_interval = "200ms"', 'spool_scan_interval = "200ms"\nshutdown_grace = "1s"'
        )
    )
    daemon.start()
    client("d=sshd", "a=192.0.2.1", f"socket={sockdir}/notify.sock")
    wait_until(lambda: "event='digest'" in daemon.log(), what="a digest")
    digest_id = daemon.log().split("event='digest' digest='")[1].split("'")[0]
    start = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - start < 5
    hole.close()
    handler = Handler()
    mx = Controller(handler, hostname="127.0.0.1", port=port)
    mx.start()
    try:
        daemon.start()
        wait_until(lambda: bool(handler.messages), what="the held digest")
    finally:
        mx.stop()
    (msg,) = handler.messages
    assert msg["Message-ID"].strip().startswith(f"<{digest_id}@")  # a long host name folds it


def test_a_stopping_daemon_queues_no_datagram_it_would_drop(sockdir: Path) -> None:
    """Self-bound, once shutdown has drained its socket (here while a hung MTA holds the
    sinks for shutdown_grace), a send fails, by path and on a socket connected before:
    the client then spools the event, where a datagram queued now would die at close."""
    hole = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    sink = smtp_sink(hole.getsockname()[1]).replace('timeout = "500ms"', 'timeout = "1h"')
    path = write_config(sockdir, sinks=sink)
    interval = 'spool_scan_interval = "200ms"'
    path.write_text(path.read_text().replace(interval, f'{interval}\nshutdown_grace = "1s"'))
    event = encode({"d": "sshd", "a": "192.0.2.1"})

    async def scenario() -> tuple[OSError | None, OSError | None, dict[str, object]]:
        server = Server(config.load(path), config_path=path)
        sock = str(server.cfg.daemon.socket)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as connected:
            async with Running(server):
                connected.connect(sock)
                connected.send(event)  # a digest for the hung MTA: shutdown waits the grace
                await wait_for_status(server, lambda s: s["received"] == 1)
                server.stop()
                await asyncio.sleep(0.3)  # in the grace: the socket is drained
                errors: list[OSError | None] = []
                for send in (lambda: connected.send(event), lambda: probe_send(sock, event)):
                    try:
                        send()
                        errors.append(None)
                    except OSError as exc:
                        errors.append(exc)
        return errors[0], errors[1], server.status()

    try:
        on_connected, by_path, status = asyncio.run(scenario())
    finally:
        hole.close()
    assert isinstance(on_connected, BrokenPipeError), on_connected
    assert isinstance(by_path, FileNotFoundError), by_path
    assert status["received"] == 1


def probe_send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, path)


def test_the_mail_cap_holds_across_a_restart(sockdir: Path) -> None:
    """With mails_per_hour = 1, a second digest waits in the outbox through a restart: the
    cap counts the mail sent before it, and SIGTERM does not send past it."""
    path = write_config(sockdir, extra="\n[limits]\nmails_per_hour = 1\n")
    clock = VirtualClock()  # one clock for both runs: the restart comes later, not earlier

    async def run_once(addr: str) -> Server:
        server = Server(config.load(path), config_path=path, clock=clock)
        async with Running(server):
            send_refusals(server.cfg.daemon.socket, addr)
            await wait_for_status(server, lambda s: s["pending_events"] == 0)
        return server

    timing.run(run_once("192.0.2.1"))
    assert len(maildir_messages(sockdir / "Maildir")) == 1
    timing.run(run_once("192.0.2.2"))
    assert len(maildir_messages(sockdir / "Maildir")) == 1
    snap = Store(sockdir / "state")
    snap.open()
    (row,) = snap.load().outbox
    assert row.digest.events == 1


def test_a_sink_removed_by_reload_stops_and_can_come_back(sockdir: Path) -> None:
    """A reload that removes a sink retires its worker (no digests queue for it); one that
    brings it back starts a fresh worker that delivers."""
    a = MaildirSinkConfig(name="a", path=sockdir / "A")
    b = MaildirSinkConfig(name="b", path=sockdir / "B")
    both = make_config(sockdir, a, b, group_wait=0.1, group_interval=0.2, batch_window=0.0)

    async def scenario() -> None:
        server = Server(both, clock=VirtualClock())
        async with Running(server):
            server.apply(replace(both, sinks=(a,)))
            assert sorted(server.runtime.sinks.workers) == ["a"]
            send_refusals(server.cfg.daemon.socket, "192.0.2.1")
            await wait_for_status(server, lambda s: s["sinks"]["a"]["delivered"] == 1)
            server.apply(both)
            send_refusals(server.cfg.daemon.socket, "192.0.2.2")
            await wait_for_status(server, lambda s: s["sinks"].get("b", {}).get("delivered") == 1)

    timing.run(scenario())
    assert len(maildir_messages(sockdir / "A")) == 2
    (only,) = maildir_messages(sockdir / "B")
    assert only["X-Wrapalert-Events"] == "1"


def test_reload_keeps_what_only_a_restart_can_change(sockdir: Path) -> None:
    """A reload that moves the spool keeps scanning the spool the daemon opened."""
    cfg = make_config(sockdir)

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            moved = replace(cfg, daemon=replace(cfg.daemon, spool_dir=sockdir / "elsewhere"))
            server.apply(moved)
            await asyncio.to_thread(
                client,
                "d=sshd",
                "a=192.0.2.1",
                f"socket={sockdir}/none.sock",
                f"spool={cfg.daemon.spool_dir}",
            )
            await wait_for_status(server, lambda s: s["received"] == 1)
        return server

    assert asyncio.run(scenario()).cfg.daemon.spool_dir == cfg.daemon.spool_dir


def test_reload_during_shutdown_is_ignored(sockdir: Path) -> None:
    """A SIGHUP that arrives while the daemon stops changes nothing (and cannot hang it)."""

    async def scenario() -> None:
        server = Server(make_config(sockdir))
        async with Running(server):
            server.stop()
            assert not server.reload()

    asyncio.run(scenario())


def test_forwarded_counts_survive_a_restart(sockdir: Path) -> None:
    """A forwarding sink's delivered count is persisted like the others."""
    path = write_config(
        sockdir, sinks=f'[[sink]]\ntype = "jsonl"\npath = "{sockdir}/e.jsonl"\n', digests=False
    )

    async def once() -> dict[str, Any]:
        server = Server(config.load(path))
        async with Running(server):
            send_refusals(server.cfg.daemon.socket, count=2)
            await wait_for_status(server, lambda s: s["received"] >= 2)
        return server.status()

    asyncio.run(once())
    status = asyncio.run(once())
    assert status["sinks"]["jsonl"]["delivered"] == 4


def test_test_alert_command(daemon: DaemonProcess, sockdir: Path) -> None:
    """`wrapalert test-alert` prints each sink's result and exits 0 when all delivered."""
    daemon.start()
    result = subprocess.run(
        [WRAPALERT, "test-alert", "-c", str(daemon.config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (result.returncode, result.stdout.split()) == (0, ["maildir", "delivered"])
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Events"] == "0"
    assert daemon.stop() == 0
