"""Shared test helpers: short socket dirs, system-package gates, a real SMTP server."""

from __future__ import annotations

import asyncio
import ctypes
import email
import email.policy
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from wrapalert import config
from wrapalert.confparse import SinkConfig
from wrapalert.daemon import control
from wrapalert.daemon.server import Server
from wrapalert.model import Digest, GroupReport
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.sinks.smtp import SmtpSinkConfig

# The interpreter the hook runs: a real one, never a pyenv shim (which is a shell script).
PYTHON = sys.executable
REQUIRE_SYSTEM = os.environ.get("WRAPALERT_REQUIRE_SYSTEM") == "1"


def require(available: bool, reason: str) -> None:  # noqa: FBT001 - reads as a sentence
    """Skip when a system package is missing; under WRAPALERT_REQUIRE_SYSTEM=1, fail."""
    if available:
        return
    if REQUIRE_SYSTEM:
        pytest.fail(f"WRAPALERT_REQUIRE_SYSTEM=1 but {reason}")
    pytest.skip(reason)


def libwrap_available() -> bool:
    try:
        ctypes.CDLL("libwrap.so.0")
    except OSError:
        return False
    return True


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for AF_UNIX paths (at most 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    path.chmod(0o755)  # other uids (setpriv tests) must reach the socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(
    base: Path,
    *sinks: SinkConfig,
    group_wait: float = 0.5,
    group_interval: float = 2.0,
    batch_window: float = 0.5,
) -> config.Config:
    """A config with every path under `base` and short timers for tests."""
    return config.Config(
        daemon=replace(
            config.DaemonConfig(),
            socket=base / "notify.sock",
            state_dir=base / "state",
            spool_dir=base / "spool",
            control_socket=base / "control.sock",
            trusted_uids=(os.getuid(),),
            shutdown_grace=5.0,
            spool_scan_interval=0.2,
        ),
        digest=replace(
            config.DigestConfig(),
            group_wait=group_wait,
            group_interval=group_interval,
            batch_window=batch_window,
        ),
        sinks=sinks or (MaildirSinkConfig(path=base / "Maildir"),),
    )


class Handler:
    """aiosmtpd handler that keeps what it receives; faults are injected here."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        # Faults, injected here and never in the client under test: a reply such as
        # "451 ..." or "554 ...", "drop" (cut the connection mid-DATA) or "stall" (answer
        # nothing). `faults` replies are used first, one per attempt, then `reply`.
        self.reply = "250 OK"
        self.faults: list[str] = []
        self.attempts = 0
        self.refuse_rcpt: dict[str, str] = {}  # address -> reply, e.g. "550 5.1.1 no user"
        self.arrived = asyncio.Event()

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        _server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        _options: list[str],
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, _session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.attempts += 1
        reply = self.faults.pop(0) if self.faults else self.reply
        if reply == "drop":
            assert isinstance(server.transport, asyncio.WriteTransport)
            server.transport.abort()
            return "451 never seen"
        if reply == "stall":
            await asyncio.sleep(3600)
        if not reply.startswith("250"):
            return reply
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append(envelope)
        self.arrived.set()
        return "250 OK"

    async def wait(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        """Wait (signalled, not polled) until `count` messages arrived."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a free loopback port, in the test's event loop."""

    def __init__(self, port: int = 0) -> None:
        self.handler = Handler()
        self.server: asyncio.Server | None = None
        self.port = port

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="test-mx", enable_SMTPUTF8=True),
            "127.0.0.1",
            self.port,
            reuse_address=True,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def sink(self, **kw: Any) -> SmtpSinkConfig:
        return replace(SmtpSinkConfig(host="127.0.0.1", port=self.port, timeout=5.0), **kw)


def one_group(
    events: int = 2, *, addr: str = "192.0.2.1", created: float = 1.0, host: str = "web1"
) -> Digest:
    """A digest of one trusted sshd group from `addr`: the smallest thing a sink can send."""
    report = GroupReport(
        key=("sshd", addr),
        labels=(("daemon", "sshd"), ("client_addr", addr)),
        reason="new group",
        events=events,
        total=events,
        first_seen=created,
        last_seen=created,
        group_first_seen=created,
        trusted=True,
        uid=0,
        daemons=(("sshd", events),),
        addrs=((addr, events),),
        names=(),
        users=(),
        timeline=((created - created % 60, events),),
    )
    return Digest(host=host, created=created, groups=(report,))


def body(msg: EmailMessage, kind: str = "plain") -> str:
    """The text of one MIME part, with SMTP's CRLF line ends as plain newlines."""
    part = msg.get_body((kind,))
    assert part is not None, f"no {kind} part"
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def receiver(path: Path) -> socket.socket:
    """A datagram socket bound at `path` with SO_PASSCRED, as the daemon binds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    path.chmod(0o666)
    return sock


@contextmanager
def filled(path: Path) -> Iterator[None]:
    """The datagram socket at `path` with its receive queue full, whatever
    net.unix.max_dgram_qlen says (the kernel's 10, or systemd's 512).

    A sender also stops at its own send buffer (about 270 small datagrams), which is
    not a full queue: a new sender takes over until even a fresh one gets EAGAIN.
    The queued datagrams stay after the senders close at the end."""
    senders: list[socket.socket] = []
    try:
        for _ in range(1000):
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            senders.append(sender)
            sender.setblocking(False)
            try:
                sender.sendto(b"filler", str(path))
            except BlockingIOError:
                break  # even a fresh sender's first datagram: the queue is full
            with suppress(BlockingIOError):
                for _ in range(100_000):
                    sender.sendto(b"filler", str(path))
        else:
            pytest.fail(f"the receive queue of {path} never filled up")
        yield
    finally:
        for sender in senders:
            sender.close()


WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
# Appended to a config whose sinks take no digests: says that is meant (else refused).
NO_DIGESTS = "\n[digest]\nenabled = false\n"
NOTIFY = str(Path(__file__).resolve().parent.parent / "wrapalert" / "notify.py")


def write_config(
    base: Path,
    *,
    group_wait: str = "500ms",
    extra: str = "",
    sinks: str | None = None,
    digests: bool = True,
) -> Path:
    """A TOML config under `base` (paths, short timers, a Maildir sink unless `sinks` says
    otherwise) for `wrapalert run` or `Server(config_path=...)`. `digests=False`: `sinks`
    take none, and the config says that is meant."""
    if sinks is None:
        sinks = f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'

    path = base / "wrapalert.toml"
    path.write_text(f"""\
[daemon]
socket = "{base}/notify.sock"
control_socket = "{base}/control.sock"
state_dir = "{base}/state"
spool_dir = "{base}/spool"
trusted_uids = [{os.getuid()}]
spool_scan_interval = "200ms"

[digest]
group_wait = "{group_wait}"
group_interval = "2s"
batch_window = "500ms"
{"" if digests else "enabled = false"}

{sinks}
{extra}""")
    return path


def _delivery_order(path: Path) -> tuple[int, int, int, str]:
    """A Maildir name's time (seconds, microseconds) and sequence number, as numbers: as
    text, M99999 sorts after M100000 and Q9 after Q10, and the oldest mail came last."""
    found = re.fullmatch(r"(\d+)\.M(\d+)P\d+Q(\d+)\..*", path.name)
    if found is None:
        return (0, 0, 0, path.name)  # not the sink's name: delivered by something else
    sec, usec, seq = found.groups()
    return (int(sec), int(usec), int(seq), path.name)


def maildir_messages(maildir: Path) -> list[EmailMessage]:
    """Every message delivered into `maildir`/new, oldest first."""
    new = maildir / "new"
    if not new.is_dir():
        return []
    out = []
    for path in sorted(new.iterdir(), key=_delivery_order):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def spool_files(spool: Path) -> list[Path]:
    """What the spool holds for the daemon to read: entries of the shared dir and of each
    uid's own dir, which the daemon made and which is not itself listed."""
    out: list[Path] = []
    for path in sorted(spool.iterdir()):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) and path.name.isdigit() and st.st_uid == int(path.name):
            out.extend(sorted(path.iterdir()))
        else:
            out.append(path)
    return out


def client(*args: str, user: int | None = None) -> None:
    """Run the notify client as libwrap would (optionally as another uid, via setpriv)."""
    argv = [PYTHON, "-I", "-S", NOTIFY, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=10)


def report_through_daemon(
    cfg: config.Config,
    addrs: Sequence[str | tuple[str, str]] = ("192.0.2.1", "192.0.2.2"),
    *extra: str,
    then: Callable[[], object] | None = None,
) -> Server:
    """Run the daemon on `cfg`; report one refusal per address (by sshd, or by the daemon
    of a (daemon, address) pair) through the real client (with `extra` KEY=VALUE words);
    call `then` (in a thread) before stopping."""

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            sock = f"socket={cfg.daemon.socket}"
            for item in addrs:
                daemon, addr = item if isinstance(item, tuple) else ("sshd", item)
                await asyncio.to_thread(client, f"d={daemon}", f"a={addr}", *extra, sock)
            if then is not None:
                await asyncio.to_thread(then)
        return server

    return asyncio.run(scenario())


class Running:
    """`async with Running(server)`: the daemon runs in this event loop until the block ends."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.task = asyncio.create_task(self.server.run(handle_signals=False))
        ready = asyncio.create_task(self.server.ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not self.server.ready.is_set():
            ready.cancel()
            await self.task  # start-up failed: raise its error here
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.task is not None
        self.server.stop()
        await self.task


class Deliveries:
    """An on_delivery hook that records digests and lets a test wait for N events."""

    def __init__(self) -> None:
        self.digests: list[Digest] = []
        self.errors: list[Exception] = []
        self.changed = asyncio.Event()

    def __call__(self, _sink: str, digest: Digest, error: Exception | None) -> None:
        if error is None:
            self.digests.append(digest)
        else:
            self.errors.append(error)
        self.changed.set()

    @property
    def events(self) -> int:
        return sum(d.events for d in self.digests)

    async def wait_events(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while self.events < count:
                self.changed.clear()
                await self.changed.wait()


class DaemonProcess:
    """`wrapalert run` as a child process fed by a socket we hold, as systemd would hold it.

    The socket survives the daemon's death, so SIGKILL tests lose only what the
    daemon itself had in memory, never what waits in the kernel queue.
    """

    SHIM = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.argv[2], sys.argv[2:])"
    )

    def __init__(self, base: Path, config_path: Path) -> None:
        self.base = base
        self.config_path = config_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(base / "notify.sock"))
        self.notify_path = base / "systemd.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(30)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = base / "daemon.log"

    def start(
        self,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """Start it; `prefix` runs before the daemon's own argv (e.g. prlimit ...)."""
        env = os.environ | {"NOTIFY_SOCKET": str(self.notify_path)} | (env or {})
        with self.stderr.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    PYTHON,
                    "-c",
                    self.SHIM,
                    str(self.sock.fileno()),
                    WRAPALERT,
                    "run",
                    "-c",
                    str(self.config_path),
                ],
                pass_fds=(self.sock.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        if wait:
            self.wait_for("READY=1")

    def wait_for(self, word: str) -> str:
        """The next sd_notify message holding `word`."""
        while True:
            message = self.notify.recv(4096).decode()
            if word in message:
                return message

    def status(self) -> dict[str, Any]:
        path = self.base / "control.sock"
        reply = control.request(path, "status")
        status: dict[str, Any] = reply["status"]
        return status

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.notify.close()

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll another process's observable state (its files, its status), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


@pytest.fixture
def cfg_path(sockdir: Path) -> Path:
    """A config whose jsonl sink records every event the daemon receives, unthrottled."""
    sinks = (
        f'[[sink]]\ntype = "jsonl"\npath = "{sockdir}/events.jsonl"\nevents_per_second = 100000\n'
    )
    (sockdir / "spool").mkdir()
    return write_config(sockdir, sinks=sinks, digests=False)


def jsonl_events(base: Path) -> list[dict[str, Any]]:
    """The event records the `cfg_path` config's jsonl sink wrote under `base`."""
    path = base / "events.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("type") == "event"]
