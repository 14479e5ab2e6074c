"""`wrapalert run` as a process: signals, sd_notify, systemd socket activation."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import WRAPALERT, body, client, maildir_messages, require, write_config


@contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A socket where the daemon's sd_notify messages arrive, as systemd would receive them."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    try:
        yield sock
    finally:
        sock.close()


def wait_for(sock: socket.socket, word: str) -> str:
    """The next sd_notify message containing `word` (earlier ones are skipped)."""
    while True:
        message = sock.recv(4096).decode()
        if word in message:
            return message


def start(argv: list[str], notify: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"NOTIFY_SOCKET": str(notify)}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigterm_flushes_pending_events_and_exits_zero(sockdir: Path) -> None:
    """Events still inside group_wait are mailed on SIGTERM; SIGHUP before it does no harm."""
    cfg = write_config(sockdir, group_wait="1h")
    with notify_socket(sockdir / "systemd.sock") as sd:
        proc = start([WRAPALERT, "run", "-c", str(cfg)], sockdir / "systemd.sock")
        try:
            assert "READY=1" in wait_for(sd, "READY=1")
            for addr in ("192.0.2.1", "192.0.2.1", "198.51.100.4"):
                client("d=sshd", f"a={addr}", f"socket={sockdir}/notify.sock")
            proc.send_signal(signal.SIGHUP)
            proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in wait_for(sd, "STOPPING=1")
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
            proc.wait()
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Events"] == "3"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert "shutdown flush" in body(msg)
    assert not (sockdir / "notify.sock").exists()  # ours: removed on exit


@pytest.mark.system
def test_adopts_a_socket_passed_the_systemd_way(sockdir: Path) -> None:
    """Under systemd-socket-activate the daemon reads the passed socket and leaves it in place."""
    activate = shutil.which("systemd-socket-activate")
    require(activate is not None, "systemd-socket-activate not found (apt-get install systemd)")
    assert activate is not None
    cfg = write_config(sockdir, group_wait="1h")
    sock = sockdir / "notify.sock"
    with notify_socket(sockdir / "systemd.sock") as sd:
        proc = start(
            # It passes on only the variables named with -E.
            [
                activate,
                "--datagram",
                "-l",
                str(sock),
                "-E",
                f"NOTIFY_SOCKET={sockdir}/systemd.sock",
                WRAPALERT,
                "run",
                "-c",
                str(cfg),
            ],
            sockdir / "systemd.sock",
        )
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():  # systemd-socket-activate binds, then waits for traffic
                assert time.monotonic() < deadline, "systemd-socket-activate did not bind"
                time.sleep(0.01)
            client("d=sshd", "a=192.0.2.1", f"socket={sock}")  # activates the service
            wait_for(sd, "READY=1")
            client("d=sshd", "a=192.0.2.1", f"socket={sock}")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
            proc.wait()
    (msg,) = maildir_messages(sockdir / "Maildir")
    # The untrusted report is counted apart: Events plus Untrusted are the two received.
    assert (msg["X-Wrapalert-Events"], msg["X-Wrapalert-Untrusted"]) == ("1", "1")
    text = body(msg)
    # systemd-socket-activate does not set SO_PASSCRED (PassCredentials=yes does): the
    # activating datagram arrives without credentials, so it is untrusted. The daemon turns
    # SO_PASSCRED on when it adopts the socket, so the second one is trusted.
    assert "reported by uid unknown, untrusted: 1 event," in text
    assert re.search(r"^192\.0\.2\.1 +\S+ +1 \S+ new +sshd$", text, re.MULTILINE)
    assert "(shutdown flush): 2 groups." in text
    assert sock.exists()  # systemd's socket: not ours to remove


def test_bad_config_is_refused_with_file_line_and_key(sockdir: Path) -> None:
    """`wrapalert run` with a bad config exits 1 and names the file, line and key."""
    cfg = write_config(sockdir, group_wait="ten seconds")
    result = subprocess.run(
        [WRAPALERT, "run", "-c", str(cfg)], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 1
    line = cfg.read_text().splitlines().index('group_wait = "ten seconds"') + 1
    assert f"{cfg}:{line}: [digest] group_wait: bad duration" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_remove_our_socket(sockdir: Path, signum: int) -> None:
    """SIGINT and SIGTERM both end the daemon cleanly, exit 0, socket removed."""
    cfg = write_config(sockdir)
    with notify_socket(sockdir / "systemd.sock") as sd:
        proc = start([WRAPALERT, "run", "-c", str(cfg)], sockdir / "systemd.sock")
        try:
            wait_for(sd, "READY=1")
            assert (sockdir / "notify.sock").exists()
            proc.send_signal(signum)
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
            proc.wait()
    assert not (sockdir / "notify.sock").exists()
