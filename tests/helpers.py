"""What the tests share: factories, fakes, the running daemon and the system gate.

One module, imported by name (`from helpers import event, Running`): tests/ is on
sys.path (pyproject's `pythonpath`). conftest.py keeps only fixtures and hooks.
Harnesses for one kind of system part keep modules of their own: timing.py (the
virtual clock), netns.py and nftns.py (network namespaces, nftables), wrapped.py
(sshd, inetd and tcpd), hookprobe.py and libwrap_oracle.py (scripts run as children).

Contents, in order: the system (interpreters, `require` and the `system` marker);
factories (events, group reports, digests, configs); fakes and real servers in the
test's own process (SMTP, HTTP, delivery recorders, sink records); the daemon (in
this event loop, or as a child process as systemd runs it); what it leaves behind
(Maildir, spool, jsonl); waiting on another process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import email
import email.policy
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, Self

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from wrapalert import config
from wrapalert.clock import Clock, SystemClock
from wrapalert.confparse import SinkConfig
from wrapalert.daemon import control
from wrapalert.daemon.alarm import Alarm
from wrapalert.daemon.canaries import Canaries
from wrapalert.daemon.notices import Post
from wrapalert.daemon.server import Server
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.model import Digest, Event, GroupReport
from wrapalert.notice import Notice
from wrapalert.preview import build_digest, parse_events
from wrapalert.sinks import EventSink, build
from wrapalert.sinks.base import TransientSinkError
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.sinks.smtp import SmtpSinkConfig
from wrapalert.sinks.syslog import SyslogSink, SyslogSinkConfig
from wrapalert.wire import encode

# -- the system ---------------------------------------------------------------------

# The interpreter the hook runs: a real one, never a pyenv shim (which is a shell script).
PYTHON = sys.executable
WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
NOTIFY = str(Path(__file__).resolve().parent.parent / "wrapalert" / "notify.py")
REQUIRE_SYSTEM = os.environ.get("WRAPALERT_REQUIRE_SYSTEM") == "1"
SYSTEM = "system"  # the marker: `make test-fast` runs -m "not system"
NOBODY = 65534

# The test running now (conftest.py's hook keeps it): `require` reads its markers.
_running: list[pytest.Item] = []


@contextmanager
def running(item: pytest.Item) -> Iterator[None]:
    """While `item` runs (setup, call, teardown): what `require` checks the marker of."""
    _running.append(item)
    try:
        yield
    finally:
        _running.remove(item)


def require(available: bool, reason: str) -> None:  # noqa: FBT001 - reads as a sentence
    """Gate a test on a part of the system (root, a package, a namespace): skip when it is
    missing (under WRAPALERT_REQUIRE_SYSTEM=1, fail). A test that asks must be marked
    `system`, whether or not the part is there: else it fails, so the marker cannot be
    forgotten where the fast loop (`-m "not system"`) would run it."""
    if _running and _running[-1].get_closest_marker(SYSTEM) is None:
        item = _running[-1]
        pytest.fail(
            f"{item.nodeid} needs the system ({reason}) but is not marked: add "
            f"@pytest.mark.{SYSTEM} (or `pytestmark = pytest.mark.{SYSTEM}` for the file)",
            pytrace=False,
        )
    if available:
        return
    if REQUIRE_SYSTEM:
        pytest.fail(f"WRAPALERT_REQUIRE_SYSTEM=1 but {reason}")
    pytest.skip(reason)


# systemd-analyze security's 0-10 scale: 1.8 as root with two capabilities, 1.1 as user
# wrapalert with none, 0.9 in a user namespace of its own, 1.0 with AF_NETLINK for the
# evidence lookups (issue 14 asked for 1.0: README, "Running it as a service").
EXPOSURE_MAX = 1.0
EXPOSURE_MAX_NFTABLES = 1.4  # with the nftables drop-in (2.0 as root)


def libwrap_available() -> bool:
    try:
        ctypes.CDLL("libwrap.so.0")
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- factories ------------------------------------------------------------------------

NOW = 1_700_000_000.0  # the tests' fixed wall clock (timing.EPOCH too)
# Appended to a config whose sinks take no digests: says that is meant (else refused).
NO_DIGESTS = "\n[digest]\nenabled = false\n"


@dataclass(frozen=True)
class Into:
    """Where an Intake hands events in a test (daemon/intake.py's Target): `accept` takes
    each accepted event, and these uids are trusted."""

    accept: Callable[[Event], None]
    trusted_uids: frozenset[int]


def event(
    daemon: str = "sshd",
    addr: str = "192.0.2.1",
    *,
    at: float = 0.0,
    trusted: bool = True,
    uid: int | None = None,
    transport: str = "unknown",
    **fields: str,
) -> Event:
    """A refusal as intake hands it on: from root (trusted) or nobody (not), unless `uid`
    says; `transport` "tcp" when the kernel vouched for its source (daemon/witness.py)."""
    if uid is None:
        uid = 0 if trusted else NOBODY
    return Event(
        {"daemon": daemon, "client_addr": addr, **fields},
        at,
        uid=uid,
        trusted=trusted,
        transport=transport,
    )


def group_report(
    daemon: str = "sshd",
    addr: str = "192.0.2.1",
    events: int = 1,
    *,
    at: float = NOW,
    trusted: bool = True,
    **changes: Any,
) -> GroupReport:
    """A new group's report: `events` refusals of `addr` by `daemon`, seen over the minute
    from `at`; `changes` replace any other field."""
    report = GroupReport(
        key=(daemon, addr),
        labels=(("daemon", daemon), ("client_addr", addr)),
        reason="new group",
        events=events,
        total=events,
        first_seen=at,
        last_seen=at + 60,
        group_first_seen=at,
        trusted=trusted,
        uid=0 if trusted else NOBODY,
        daemons=((daemon, events),),
        addrs=((addr, events),),
        names=(),
        users=(),
    )
    return replace(report, **changes)


def one_group(
    events: int = 2, addr: str = "192.0.2.1", *, created: float = 1.0, host: str = "web1"
) -> Digest:
    """A digest of one trusted sshd group from `addr`: the smallest thing a sink can send."""
    report = group_report(
        "sshd",
        addr,
        events,
        at=created,
        last_seen=created,
        uid=0,
        timeline=((created - created % 60, events),),
    )
    return Digest(host=host, created=created, groups=(report,))


def preview_digest(lines: str, cfg: config.Config | None = None, *, host: str = "web1") -> Digest:
    """The digest the real Aggregator makes of these events (preview's events format),
    at NOW."""
    return build_digest(parse_events(lines), cfg or config.Config(), NOW, host=host)


# A test's daemon does not watch this machine's /etc/hosts.allow and /etc/hosts.deny: what
# they hold varies (tests that watch tables give their own paths).
NO_HOOK_WATCH = config.HookConfig(watch=False)


def make_config(
    base: Path,
    *sinks: SinkConfig,
    group_wait: float = 0.5,
    group_interval: float = 2.0,
    batch_window: float = 0.5,
    hook: config.HookConfig = NO_HOOK_WATCH,
) -> config.Config:
    """A config with every path under `base` and short timers for tests; `hook`: the hook
    watch is off (the machine's own /etc/hosts.deny is not the test's business)."""
    return config.Config(
        hook=hook,
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


def write_config(
    base: Path,
    *,
    group_wait: str = "500ms",
    extra: str = "",
    sinks: str | None = None,
    digests: bool = True,
    hook: str = "watch = false",
) -> Path:
    """A TOML config under `base` (paths, short timers, a Maildir sink unless `sinks` says
    otherwise) for `wrapalert run` or `Server(config_path=...)`. `digests=False`: `sinks`
    take none, and the config says that is meant. `hook`: the [hook] table's keys (by
    default the watch is off: this machine's /etc/hosts.deny is not the test's business)."""
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

[hook]
{hook}

{sinks}
{extra}""")
    return path


def jsonl_config(base: Path) -> Path:
    """A config whose jsonl sink records every event the daemon receives, unthrottled."""
    sinks = f'[[sink]]\ntype = "jsonl"\npath = "{base}/events.jsonl"\nevents_per_second = 100000\n'
    (base / "spool").mkdir()
    return write_config(base, sinks=sinks, digests=False)


# Every field an event record can have (pipeline/forward.py event_record), as the daemon
# makes them, and the line the syslog sink turns it into (journald's MESSAGE too).
EVENT_RECORD: dict[str, object] = {
    "type": "event",
    "received": 1714564800.25,
    "daemon": "sshd",
    "daemon_pid": "4242",
    "user": "root",
    "client": "root@scanner.example",
    "client_addr": "203.0.113.5",
    "client_name": "scanner.example",
    "client_host": "scanner.example",
    "server": "sshd@web1",
    "server_addr": "192.0.2.10",
    "client_port": "40022",
    "verdict": "deny",
    "host": "web1",
    "time": 1714564799.5,
    "trusted": True,
    "uid": 0,
}
EVENT_RECORD_TEXT = (
    "refused verdict=deny trusted=true uid=0 daemon=sshd client_addr=203.0.113.5"
    " client_name=scanner.example user=root client=root@scanner.example"
    " client_host=scanner.example client_port=40022 server=sshd@web1"
    " server_addr=192.0.2.10 daemon_pid=4242 host=web1 time=1714564799.5"
    " received=1714564800.25"
)
# The note of records a rate limit held back, and its line.
HELD_RECORD: dict[str, object] = {
    "type": "held",
    "events": 90,
    "first": 1714564800.5,
    "last": 1714564830.25,
    "daemons": {"sshd": 45, "vsftpd": 45},
    "other_daemons": 0,
}
HELD_RECORD_TEXT = (
    "held events=90 first=1714564800.5 last=1714564830.25 daemons=sshd:45,vsftpd:45 other_daemons=0"
)
# Record values as hostile as a local user writing to the socket could make them.
HOSTILE_FIELDS = {
    "daemon": "sshd\nrefused daemon=forged trusted=true",
    "client_addr": "198.51.100.7\r<0>forged[1]: root login",
    "client_name": 'say "hi"\x1b[31m\x7f\x85 a=b\\',
    "user": "zo\u00eb\u2028\u202e\U0001f600\x00",
    "client": "x" * 10_000,
}


def syslog_sink(**kw: Any) -> SyslogSink:
    """The forwarding sink `build` makes for a syslog config with `kw` set."""
    sink = build(replace(SyslogSinkConfig(), **kw))
    assert isinstance(sink, SyslogSink)
    assert isinstance(sink, EventSink)
    return sink


# -- sending --------------------------------------------------------------------------


def send_datagrams(path: Path, *payloads: bytes) -> None:
    """Each payload as one datagram to the socket at `path`, from this process."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for data in payloads:
            s.sendto(data, str(path))


def send_refusals(path: Path, addr: str = "192.0.2.1", count: int = 1) -> None:
    """`count` sshd refusals of `addr`, as datagrams to the socket at `path`."""
    send_datagrams(path, *[encode({"d": "sshd", "a": addr})] * count)


class RecordSink(Protocol):
    async def send_records(self, records: list[dict[str, object]]) -> None: ...


def send_records(sink: RecordSink, *records: dict[str, object]) -> None:
    """One batch of records through a forwarding sink, on an event loop of its own."""
    asyncio.run(sink.send_records(list(records)))


def client(*args: str, user: int | None = None) -> None:
    """Run the notify client as libwrap would (optionally as another uid, via setpriv)."""
    argv = [PYTHON, "-I", "-S", NOTIFY, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=10)


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


# -- fakes and servers in the test's process ----------------------------------------


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


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall: bool = False  # read the request, then never answer


class HttpServer:
    """A real HTTP server (http.server, its own threads) on a free loopback port.

    It keeps every request; faults are injected here, never into the client under
    test: `replies` are used first, one per request, then `reply`.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.replies: list[Reply] = []
        self.reply = Reply()
        self.tls = tls
        self.release = threading.Event()  # ends every stalled answer at teardown
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.answer(self.rfile.read(length))

            def do_GET(self) -> None:
                self.answer(b"")

            def answer(self, body: bytes) -> None:
                owner.requests.append(Request(self.command, self.path, self.headers, body))
                reply = owner.replies.pop(0) if owner.replies else owner.reply
                if reply.stall:
                    owner.release.wait(30)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status not in (204, 304):
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status not in (204, 304):
                    self.wfile.write(reply.body)

            def log_message(self, *_args: object) -> None:
                pass  # the test reads `requests`; stderr noise helps nobody

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        # A short poll: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.httpd is not None
        assert self.thread is not None
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    @property
    def port(self) -> int:
        assert self.httpd is not None
        port: int = self.httpd.server_address[1]
        return port

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def stalled_collector() -> tuple[asyncio.Server, int]:
    """A TCP collector on loopback that accepts and never reads, and its port. Its small
    receive buffer stalls a sender after kilobytes, not after the megabytes loopback's
    autotuned buffers would take (the stall is the point, not how much fills it)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))

    async def never_read(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    # limit: the stream buffers 2 KiB before it stops reading, not 128 KiB.
    server = await asyncio.start_server(never_read, sock=listener, limit=1024)
    port: int = listener.getsockname()[1]
    return server, port


def http_get(url: str, timeout: float = 5) -> bytes:
    """GET one of the test's own http:// URLs (an error status raises)."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - our URL, http only
        body: bytes = reply.read()
        return body


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


class Mailbox:
    """A digest sink that records each digest with the virtual time it arrived; the first
    `failures` sends fail transiently."""

    def __init__(self, clock: Clock, name: str = "mail", failures: int = 0) -> None:
        self.name = name
        self.clock = clock
        self.failures = failures
        self.attempts: list[float] = []
        self.got: list[tuple[float, Digest]] = []
        self.notices: list[tuple[float, Notice]] = []  # when built to take them (sinks.base.MAIL)
        self.arrived = asyncio.Event()

    async def send(self, digest: Digest) -> None:
        self.attempts.append(self.clock.now())
        if self.failures:
            self.failures -= 1
            raise TransientSinkError("421 try again")
        self.got.append((self.clock.now(), digest))
        self.arrived.set()

    async def send_notice(self, notice: Notice) -> None:
        self.attempts.append(self.clock.now())
        if self.failures:
            self.failures -= 1
            raise TransientSinkError("421 try again")
        self.notices.append((self.clock.now(), notice))
        self.arrived.set()

    async def wait_notices(self, count: int, within: float) -> None:
        """Until `count` notices arrived, or `within` (clock) seconds passed (a failure)."""
        async with asyncio.timeout(within):
            while len(self.notices) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def wait(self, count: int, within: float) -> None:
        """Until `count` digests arrived, or `within` virtual seconds passed (a failure)."""
        async with asyncio.timeout(within):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()


@dataclass
class SinksInForce:
    """The runtime in force as the post (daemon/notices.py) asks it: the digest sinks that
    take notices, by name, and the forwarders offered hook records (none unless given)."""

    notice_sinks: dict[str, Any] = field(default_factory=dict)
    notice_forwarders: list[Any] = field(default_factory=list)


def canary_book(
    stats: Stats, clock: Clock | None = None, sinks: SinksInForce | None = None
) -> Canaries:
    """A real canary book, with a real alarm book and post behind it, whose state database
    is never opened (it keeps what it stages in memory)."""
    clock = clock or SystemClock()
    store = Store(Path("/nonexistent/wrapalert-test-state"), clock.now)
    post = Post(sinks or SinksInForce(), store, clock, stats)
    return Canaries(store, clock, stats, Alarm(store, clock, post, "test"))


class Records:
    """A forwarding sink that records the records it gets."""

    def __init__(self, name: str = "records") -> None:
        self.name = name
        self.records: list[dict[str, object]] = []

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.records.extend(records)


# -- the daemon ---------------------------------------------------------------------


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


# -- what the daemon leaves behind ------------------------------------------------------


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


def body(msg: EmailMessage, kind: str = "plain") -> str:
    """The text of one MIME part, with SMTP's CRLF line ends as plain newlines."""
    part = msg.get_body((kind,))
    assert part is not None, f"no {kind} part"
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


class Elements(HTMLParser):
    """Every start tag and attribute name of a document, its attribute values and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.values: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)
        self.values.extend(value or "" for _, value in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def elements(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    return parser


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(tmp_path: Path, page: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Headless Chromium on `page` (written to a file), with its own profile under tmp_path."""
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
    path = tmp_path / "digest.html"
    path.write_text(page, encoding="utf-8")
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run([*argv, path.as_uri()], capture_output=True, check=True, timeout=120)


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


def jsonl_events(base: Path) -> list[dict[str, Any]]:
    """The event records the `jsonl_config` config's jsonl sink wrote under `base`."""
    path = base / "events.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("type") == "event"]


# -- login sessions (shield.py, sessions.py) -------------------------------------------

# /run/systemd/sessions/c2 as systemd-logind 257 (Debian 13) wrote it for an ssh login
# from 127.0.0.1 (a booted trixie tree under systemd-nspawn), the address changed.
LOGIND_SESSION = """\
# This is private data. Do not parse.
UID=0
USER=root
ACTIVE=1
IS_DISPLAY=0
STATE=active
REMOTE=1
LEADER_FD_SAVED=1
TYPE=tty
ORIGINAL_TYPE=tty
CLASS=user
SCOPE=session-c2.scope
FIFO=/run/systemd/sessions/c2.ref
REMOTE_HOST=203.0.113.50
SERVICE=sshd
POSITION=0
LEADER=75
REALTIME=1796520494002894
MONOTONIC=855785377
"""
UTMPDUMP = """\
[7] [12345] [ts/1] [root    ] [pts/1       ] [203.0.113.51        ] [203.0.113.51   ] [2026-12-06T01:00:00,000000+00:00]
[7] [12346] [ts/2] [alice   ] [pts/2       ] [2001:db8::7         ] [2001:db8::7    ] [2026-12-06T01:00:00,000000+00:00]
[8] [12347] [ts/3] [bob     ] [pts/3       ] [198.51.100.1        ] [198.51.100.1   ] [2026-12-06T01:00:00,000000+00:00]
[7] [12348] [ts/4] [carol   ] [pts/4       ] [host.example        ] [0.0.0.0        ] [2026-12-06T01:00:00,000000+00:00]
[7] [12349] [ts/5] [dave    ] [pts/5       ] [::ffff:198.51.100.2 ] [0.0.0.0        ] [2026-12-06T01:00:00,000000+00:00]
"""  # noqa: E501 - utmpdump's own line format


class _Utmp(ctypes.Structure):
    """glibc's struct utmp on Linux (utmp(5)), declared from the manual page."""

    _fields_ = (
        ("ut_type", ctypes.c_short),
        ("ut_pid", ctypes.c_int),
        ("ut_line", ctypes.c_char * 32),
        ("ut_id", ctypes.c_char * 4),
        ("ut_user", ctypes.c_char * 32),
        ("ut_host", ctypes.c_char * 256),
        ("ut_exit", ctypes.c_short * 2),
        ("ut_session", ctypes.c_int32),
        ("ut_tv", ctypes.c_int32 * 2),
        ("ut_addr_v6", ctypes.c_uint8 * 16),
        ("unused", ctypes.c_char * 20),
    )


def utmp_file(tmp_path: Path, text: str = UTMPDUMP) -> Path:
    """A utmp file written in place by glibc itself (utmpname, pututline) from
    utmpdump-style lines: an independent writer where util-linux no longer ships
    utmpdump (Debian 13)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    assert ctypes.sizeof(_Utmp) == 384, "struct utmp is 384 bytes on Linux"
    path = tmp_path / "utmp"
    path.write_bytes(b"")
    assert libc.utmpname(os.fsencode(path)) == 0
    libc.pututline.restype = ctypes.c_void_p
    libc.setutent()
    try:
        for line in text.splitlines():
            kind, pid, ident, user, tty, host, addr, _when = (
                f.strip() for f in re.findall(r"\[([^\]]*)\]", line)
            )
            record = _Utmp(ut_type=int(kind), ut_pid=int(pid))
            record.ut_line, record.ut_id = tty.encode(), ident.encode()
            record.ut_user, record.ut_host = user.encode(), host.encode()
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            packed = socket.inet_pton(family, addr)
            ctypes.memmove(record.ut_addr_v6, packed, len(packed))
            assert libc.pututline(ctypes.byref(record)), os.strerror(ctypes.get_errno())
    finally:
        libc.endutent()
        libc.utmpname(b"/var/run/utmp")
    return path


# -- waiting ------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll another process's observable state (its files, its status), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


async def ticking(work: Awaitable[None]) -> tuple[float, int, BaseException | None]:
    """Run `work` next to a 10 ms ticker: its time, the ticks seen (a blocked event loop
    ticks no more) and what it raised."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    start = time.monotonic()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(10):
            await work
    except Exception as exc:  # noqa: BLE001 - returned for the test to look at
        error = exc
    finally:
        ticker.cancel()
    return time.monotonic() - start, ticks, error
