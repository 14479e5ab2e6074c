"""End to end into a real mailbox: libwrap -> client -> daemon -> exim4 -> /var/mail."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import (
    PYTHON,
    Deliveries,
    Running,
    body,
    free_port,
    libwrap_available,
    make_config,
    one_group,
    require,
)

from wrapalert import mailroute
from wrapalert.cli import hosts_deny_line
from wrapalert.daemon.server import Server
from wrapalert.libwrap import LibWrap
from wrapalert.sinks import build
from wrapalert.sinks.sendmail import SendmailSink, SendmailSinkConfig
from wrapalert.sinks.smtp import SmtpSink, SmtpSinkConfig

pytestmark = pytest.mark.system

MAIL_SPOOL = Path("/var/mail")


@pytest.fixture
def exim(tmp_path: Path) -> Iterator[int]:
    """exim4 (Debian's default config) listening on a free loopback port; yields the port."""
    with running_exim(tmp_path) as port:
        yield port


@contextlib.contextmanager
def running_exim(tmp_path: Path, aliases: Path | None = None) -> Iterator[int]:
    """exim4 on a free loopback port; with `aliases`, in a mount namespace of its own where
    that file is /etc/aliases (the host's stays as it is)."""
    binary = shutil.which("exim4") or "/usr/sbin/exim4"
    require(Path(binary).exists(), "exim4 is not installed (apt-get install exim4-daemon-light)")
    require(os.geteuid() == 0, "running exim4 as a daemon needs root")
    run_dir = Path("/run/exim4")
    run_dir.mkdir(exist_ok=True)
    shutil.chown(run_dir, "Debian-exim")
    port = free_port()
    argv = [binary, "-bdf", "-q30m", "-oX", str(port), "-oP", str(tmp_path / "exim.pid")]
    if aliases is not None:
        script = 'mount --bind "$1" /etc/aliases && shift && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(aliases), *argv]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (
                    f"exim4 exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
                assert time.monotonic() < deadline, "exim4 did not start listening"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def find_in_mailboxes(message_id: str, timeout: float = 20.0) -> tuple[Path, EmailMessage]:
    """The mailbox file under /var/mail holding `message_id`, once exim has delivered it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for box in MAIL_SPOOL.iterdir():
            raw = box.read_bytes()
            if message_id.encode() not in raw:
                continue
            # mbox: the last message in the file with our id.
            # rfind: a digest's Message-ID is stable, so an earlier run's copy may come first.
            chunk = raw[raw.rfind(b"\nFrom ", 0, raw.rfind(message_id.encode())) + 1 :]
            chunk = chunk.split(b"\n", 1)[1]
            next_from = chunk.find(b"\nFrom ")
            if next_from != -1:
                chunk = chunk[: next_from + 1]
            msg = email.message_from_bytes(chunk, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            return box, msg
        time.sleep(0.2)  # exim delivers in its own process: nothing to wait on but the file
    raise AssertionError(f"{message_id} not delivered into {MAIL_SPOOL} within {timeout} s")


def test_digest_reaches_roots_mailbox_through_exim(exim: int, sockdir: Path) -> None:
    """A refusal through libwrap ends as a digest in a local mailbox, delivered by exim4."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")

    async def scenario() -> Deliveries:
        seen = Deliveries()
        sink = SmtpSinkConfig(host="127.0.0.1", port=exim, to=("root",), timeout=10)
        cfg = make_config(sockdir, sink)
        async with Running(Server(cfg, on_delivery=seen)):
            (sockdir / "hosts.allow").write_text("")
            (sockdir / "hosts.deny").write_text(hosts_deny_line(cfg, PYTHON) + "\n")
            wrap = LibWrap(sockdir / "hosts.allow", sockdir / "hosts.deny")
            for addr in ("192.0.2.77", "192.0.2.77", "198.51.100.78"):
                assert not await asyncio.to_thread(wrap.allowed, "sshd", addr)
            await seen.wait_events(3)
        return seen

    seen = asyncio.run(scenario())
    assert seen.errors == []
    (digest,) = seen.digests
    box, msg = find_in_mailboxes(f"<{digest.id}@")
    assert box.parent == MAIL_SPOOL
    assert msg["X-Wrapalert-Events"] == "3"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert msg["X-Wrapalert-Host"] == socket.gethostname()
    # The subject names the host too, cut with "…" when long (78 characters in all).
    assert re.match(r"\[wrapalert\] \S+: 3 refused", msg["Subject"]), msg["Subject"]
    text = body(msg)
    # One row per address: address, name, count, last seen, status, daemons.
    assert re.search(r"^192\.0\.2\.77 +\S+ +2 \S+ new +sshd$", text, re.MULTILINE)
    assert re.search(r"^198\.51\.100\.78 +\S+ +1 \S+ new +sshd$", text, re.MULTILINE)


def test_the_sendmail_sink_delivers_through_exims_sendmail() -> None:
    """`sendmail -t -oi` (exim4's) takes the digest from stdin into root's mailbox."""
    binary = Path("/usr/sbin/sendmail")
    require(binary.exists(), "no /usr/sbin/sendmail (apt-get install exim4-daemon-light)")
    require(os.geteuid() == 0, "exim4 delivers into /var/mail as root")
    sink = build(SendmailSinkConfig(to=("root",), timeout=30.0))
    assert isinstance(sink, SendmailSink)
    digest = one_group(4, addr="192.0.2.44")
    asyncio.run(sink.send(digest))
    box, msg = find_in_mailboxes(f"<{digest.id}@")
    assert box.parent == MAIL_SPOOL
    assert msg["X-Wrapalert-Events"] == "4"
    assert re.search(r"^192\.0\.2\.44 +\S+ +4 \S+ \w+ +sshd$", body(msg), re.MULTILINE)


def mail_root(port: int, host: str = "127.0.0.1") -> Path:
    """Send one digest to root through the smtp sink; the mailbox exim put it in."""
    digest = one_group(2, addr="192.0.2.45")
    sink = build(SmtpSinkConfig(host=host, port=port, to=("root",), timeout=10))
    assert isinstance(sink, SmtpSink)
    asyncio.run(sink.send(digest))
    box, _ = find_in_mailboxes(f"<{digest.id}@")
    return box


def test_roots_mailbox_is_where_mailroute_says(exim: int) -> None:
    """On this host as it is: the digest to root lands in the mailbox mailroute predicts
    (stock Debian: /var/mail/mail, the mail4root router's), or, when an alias sends root's
    mail elsewhere, not in mail4root's file."""
    route = mailroute.root_route(Path("/"))
    require(route.mta == "exim4", f"the local MTA is {route.mta}, not exim4")
    box = mail_root(exim)
    if route.mailbox is not None:
        assert box.resolve() == route.mailbox.resolve()
    else:
        assert route.reaches_person is not False


def test_a_root_alias_moves_roots_mail_where_mailroute_says(tmp_path: Path) -> None:
    """With `root: daemon` in a private /etc/aliases, exim delivers root's digest to
    /var/mail/daemon, and mailroute, reading the same aliases, says so."""
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: root\nroot: daemon\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "etc/aliases").symlink_to(aliases)
    (root / "etc/exim4").symlink_to("/etc/exim4")
    (root / "usr/sbin/exim4").symlink_to(shutil.which("exim4") or "/usr/sbin/exim4")
    (root / "var/mail").symlink_to(MAIL_SPOOL)
    route = mailroute.root_route(root)
    assert route.reaches_person is True
    assert route.mailbox is not None
    target = MAIL_SPOOL / "daemon"
    existed = target.exists()
    try:
        with running_exim(tmp_path, aliases) as port:
            box = mail_root(port)
        assert box == target
        assert route.mailbox.resolve() == target
    finally:
        if not existed:
            target.unlink(missing_ok=True)
