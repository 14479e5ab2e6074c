"""syslog sink against a real rsyslogd: RFC 3164 on a local socket, RFC 5424 over UDP and
TCP, hostile values, held counts, and receivers that are missing or stop reading."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EVENT_RECORD,
    EVENT_RECORD_TEXT,
    HELD_RECORD,
    HELD_RECORD_TEXT,
    HOSTILE_FIELDS,
    free_port,
    free_udp_port,
    report_through_daemon,
    require,
    send_records,
    syslog_sink,
    ticking,
    wait_until,
    write_config,
)

from wrapalert import config
from wrapalert.model import Event
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.syslog import SyslogSink

NO_RSYSLOG = "rsyslogd is not installed (apt-get install rsyslog)"


def rsyslogd() -> str | None:
    return shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")


class Rsyslog:
    """rsyslogd in the foreground, receiving on a private imuxsock socket, UDP and TCP on
    loopback, writing each message's parsed properties as one JSON line.

    Control characters are NOT escaped on receipt (rsyslog's default would hide them), so
    whatever the sink lets through shows in the output."""

    TEMPLATE = """
global(workDirectory="{dir}" parser.escapeControlCharactersOnReceive="off"
       maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
template(name="capture" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="capture") {{
  action(type="omfile" file="{dir}/messages.jsonl" template="capture")
  action(type="omfile" file="{dir}/raw.log" template="raw")
}}
input(type="imuxsock" Socket="{dir}/log.sock" CreatePath="on" RateLimit.Interval="0"
      ruleset="capture")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="capture")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="capture")
"""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="wa-rs-", dir="/tmp"))  # short: AF_UNIX paths
        self.socket = self.dir / "log.sock"
        self.udp = free_udp_port()
        self.tcp = free_port()
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(self.TEMPLATE.format(dir=self.dir, udp=self.udp, tcp=self.tcp))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait for its sd_notify READY=1: every input is open then."""
        notify_path = self.dir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(20)
            with (self.dir / "stderr").open("ab") as stderr:
                self.proc = subprocess.Popen(
                    [self.binary, "-n", "-f", str(self.conf), "-i", str(self.dir / "pid")],
                    env=os.environ | {"NOTIFY_SOCKET": str(notify_path)},
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                )
            while b"READY=1" not in notify.recv(4096):
                pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def messages(self) -> list[dict[str, Any]]:
        path = self.dir / "messages.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def wait(self, count: int) -> list[dict[str, Any]]:
        """The messages, once at least `count` have been written."""
        wait_until(lambda: len(self.messages()) >= count, 15, f"{count} messages in rsyslog")
        return self.messages()

    def raw_lines(self, count: int) -> list[str]:
        """raw.log's lines, once at least `count` are there: rsyslog writes each action's
        file on its own, so messages.jsonl can be complete while raw.log is still empty."""
        path = self.dir / "raw.log"

        def lines() -> list[str]:
            return path.read_text().splitlines() if path.exists() else []

        wait_until(lambda: len(lines()) >= count, 15, f"{count} lines in raw.log")
        return lines()

    def sink(self, **kw: Any) -> SyslogSink:
        """A syslog sink on this receiver's local socket (or as `kw` says)."""
        return syslog_sink(**{"socket": self.socket} | kw)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def rsyslog() -> Iterator[Rsyslog]:
    binary = rsyslogd()
    require(binary is not None, NO_RSYSLOG)
    assert binary is not None
    receiver = Rsyslog(binary)
    try:
        receiver.start()
        yield receiver
    finally:
        print((receiver.dir / "stderr").read_text(errors="replace"))
        receiver.close()


def parse_text(text: str) -> tuple[str, dict[str, str]]:
    """The first word and the key=value pairs of a sink's line, unescaped; the pattern must
    cover the whole line, so a forged pair or a stray word fails here."""
    pair = r' (\w+)=("(?:[^"\\]|\\.)*"|[^ "]*)'
    match = re.fullmatch(rf"(\w+)((?:{pair})*)", text)
    assert match is not None, f"not a key=value line: {text!r}"
    pairs = {}
    for key, value in re.findall(pair, match.group(2)):
        raw = value[1:-1] if value.startswith('"') else value
        pairs[key] = raw.encode("ascii").decode("unicode_escape")
    return match.group(1), pairs


@pytest.mark.system
def test_local_event_round_trip_with_every_field(rsyslog: Rsyslog) -> None:
    """A trusted event reaches rsyslog's local socket as one RFC 3164 line: authpriv.warning,
    ident wrapalert with our pid, and every record field in the key=value text."""
    send_records(rsyslog.sink(), EVENT_RECORD)
    (msg,) = rsyslog.wait(1)
    assert msg["input"] == "imuxsock"
    assert (msg["pri"], msg["facility"], msg["severity"]) == ("84", "authpriv", "warning")
    assert (msg["app"], msg["procid"]) == ("wrapalert", str(os.getpid()))
    assert msg["msg"] == " " + EVENT_RECORD_TEXT  # RFC 3164: the space after "tag:" stays in msg
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(1714564800.25))
    assert msg["raw"] == f"<84>{stamp} wrapalert[{os.getpid()}]: {EVENT_RECORD_TEXT}"
    word, pairs = parse_text(EVENT_RECORD_TEXT)
    assert word == "refused"
    record_keys = set(EVENT_RECORD) - {"type"}
    assert set(pairs) == record_keys


@pytest.mark.system
def test_untrusted_event_is_a_notice_with_the_configured_facility_and_ident(
    rsyslog: Rsyslog,
) -> None:
    """An untrusted event is one step less severe (notice), under the configured facility
    and ident; a sender without credentials shows uid=-."""
    record = EVENT_RECORD | {"trusted": False, "uid": None, "verdict": "allow"}
    send_records(rsyslog.sink(facility="local3", ident="wa-test"), record)
    (msg,) = rsyslog.wait(1)
    pri = str(19 * 8 + 5)  # local3 is facility 19, notice severity 5
    assert (msg["pri"], msg["facility"], msg["severity"]) == (pri, "local3", "notice")
    assert msg["app"] == "wa-test"
    word, pairs = parse_text(msg["msg"][1:])
    assert word == "allowed"
    assert (pairs["trusted"], pairs["uid"]) == ("false", "-")


@pytest.mark.system
def test_hostile_values_cannot_forge_a_line_or_a_field(rsyslog: Rsyslog) -> None:
    """CR, LF, NUL, escape sequences, quotes, '=', backslashes, non-ASCII and huge values
    arrive escaped in one line of printable ASCII; unescaped, each value is the original
    (the huge one cut with '...'), and no forged pair appears."""
    sink = rsyslog.sink()
    send_records(
        sink, EVENT_RECORD | HOSTILE_FIELDS, HELD_RECORD
    )  # the held record behind it: proof nothing else came
    messages = rsyslog.wait(2)
    assert len(messages) == 2
    raw_lines = rsyslog.raw_lines(2)
    assert len(raw_lines) == 2
    assert raw_lines[1].endswith(HELD_RECORD_TEXT)  # the held record is last: no line came between
    raw = messages[0]["raw"]
    assert raw.isascii()
    assert all(" " <= c <= "~" for c in raw), f"control character in {raw!r}"
    assert len(raw.encode()) < 2100
    word, pairs = parse_text(messages[0]["msg"][1:])
    assert word == "refused"
    assert set(pairs) == set(EVENT_RECORD) - {"type"}
    for key in ("daemon", "client_addr", "client_name", "user"):
        assert pairs[key] == HOSTILE_FIELDS[key]
    assert pairs["client"] == "x" * 256 + "..."
    assert pairs["trusted"] == "true"  # the forged "trusted=true" stayed inside daemon's value
    assert messages[1]["msg"] == " " + HELD_RECORD_TEXT


@pytest.mark.system
def test_held_record_says_how_many_events_were_held(rsyslog: Rsyslog) -> None:
    """A held record becomes one warning line counting the held events per daemon."""
    send_records(rsyslog.sink(), HELD_RECORD)
    (msg,) = rsyslog.wait(1)
    assert msg["msg"] == " " + HELD_RECORD_TEXT
    assert msg["severity"] == "warning"


@pytest.mark.system
def test_a_whole_batch_arrives_in_order(rsyslog: Rsyslog) -> None:
    """A batch of 300 records arrives whole, one message each, in order."""
    records = [EVENT_RECORD | {"client_port": str(i)} for i in range(300)]
    send_records(rsyslog.sink(), *records)
    messages = rsyslog.wait(300)
    ports = [parse_text(m["msg"][1:])[1]["client_port"] for m in messages]
    assert ports == [str(i) for i in range(300)]


@pytest.mark.system
def test_remote_udp_is_rfc5424(rsyslog: Rsyslog) -> None:
    """To a collector over UDP each record is one RFC 5424 datagram: version 1, the event's
    time, this host, app wrapalert, our pid, MSGID refused or held, no structured data."""
    sink = rsyslog.sink(address=("127.0.0.1", rsyslog.udp), protocol="udp")
    send_records(sink, EVENT_RECORD, HELD_RECORD)
    event, held = rsyslog.wait(2)
    assert event["input"] == "imudp"
    assert (event["version"], event["pri"], event["app"]) == ("1", "84", "wrapalert")
    assert (event["procid"], event["msgid"], event["sd"]) == (str(os.getpid()), "refused", "-")
    assert event["hostname"] == socket.gethostname()
    assert event["time"] == "2024-05-01T12:00:00.250000Z"
    assert event["msg"] == EVENT_RECORD_TEXT
    assert (held["msgid"], held["time"], held["msg"]) == (
        "held",
        "2024-05-01T12:00:30.250000Z",
        HELD_RECORD_TEXT,
    )


@pytest.mark.system
def test_remote_tcp_uses_octet_counting(rsyslog: Rsyslog) -> None:
    """Over TCP records are octet-counted frames (RFC 6587) on one connection: a value with
    a newline cannot split a frame, and every record is its own message."""
    sink = rsyslog.sink(address=("127.0.0.1", rsyslog.tcp), protocol="tcp")

    async def scenario() -> None:
        await sink.send_records([EVENT_RECORD, EVENT_RECORD | HOSTILE_FIELDS])
        await sink.send_records([HELD_RECORD])
        assert sink._stream is not None  # one connection, kept

    asyncio.run(scenario())
    messages = rsyslog.wait(3)
    assert [m["input"] for m in messages] == ["imtcp"] * 3
    assert messages[0]["msg"] == EVENT_RECORD_TEXT
    assert parse_text(messages[1]["msg"])[1]["daemon"] == HOSTILE_FIELDS["daemon"]
    assert messages[2]["msg"] == HELD_RECORD_TEXT
    assert len(messages) == 3


@pytest.mark.system
def test_tcp_reconnects_after_the_collector_restarts(rsyslog: Rsyslog) -> None:
    """When the collector closes the connection the sink opens a new one; while it is down,
    a send is a transient error."""
    sink = rsyslog.sink(address=("127.0.0.1", rsyslog.tcp), protocol="tcp", timeout=2.0)

    async def scenario() -> None:
        await sink.send_records([EVENT_RECORD])
        await asyncio.to_thread(rsyslog.wait, 1)
        assert sink._stream is not None
        reader, _ = sink._stream
        rsyslog.stop()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # our side has seen the close
        with pytest.raises(TransientSinkError, match="refused"):
            await sink.send_records([EVENT_RECORD])
        rsyslog.start()
        await sink.send_records([HELD_RECORD])

    asyncio.run(scenario())
    messages = rsyslog.wait(2)
    assert [m["msg"] for m in messages] == [EVENT_RECORD_TEXT, HELD_RECORD_TEXT]


@pytest.mark.system
def test_daemon_forwards_refused_connections_to_syslog(sockdir: Path, rsyslog: Rsyslog) -> None:
    """Configured with a syslog sink, the daemon sends one syslog line per refused
    connection, with the client's values and who reported it."""
    path = write_config(
        sockdir,
        sinks=f"""
[[sink]]
type = "syslog"
socket = "{rsyslog.socket}"
""",
        digests=False,
    )
    cfg = config.load(path)

    report_through_daemon(
        cfg, ("192.0.2.1", "192.0.2.2"), "n=evil.example", then=lambda: rsyslog.wait(2)
    )
    lines = [parse_text(m["msg"][1:]) for m in rsyslog.messages()]
    assert [pairs["client_addr"] for _, pairs in lines] == ["192.0.2.1", "192.0.2.2"]
    for word, pairs in lines:
        assert word == "refused"
        assert (pairs["daemon"], pairs["client_name"]) == ("sshd", "evil.example")
        assert (pairs["trusted"], pairs["uid"]) == ("true", str(os.getuid()))


@pytest.mark.system
def test_daemon_held_line_names_the_brute_force(sockdir: Path, rsyslog: Rsyslog) -> None:
    """Past the sink's rate, the held line the daemon sends names the story its events
    tell: one address refused by sshd more than `[story] brute_force` times."""
    path = write_config(
        sockdir,
        extra="[limits]\nevents_per_second = 1\n[story]\nbrute_force = 5\n",
        sinks=f"""
[[sink]]
type = "syslog"
socket = "{rsyslog.socket}"
""",
        digests=False,
    )
    report_through_daemon(config.load(path), ["203.0.113.5"] * 7, then=lambda: rsyslog.wait(2))
    lines = [parse_text(m["msg"][1:]) for m in rsyslog.messages()]
    held = [pairs for word, pairs in lines if word == "held"]
    assert [pairs["story"] for pairs in held] == ["brute force from 203.0.113.5 on sshd (6 tries)"]


# -- receivers that are missing, wrong or stalled (plain sockets: no rsyslog needed) -----


def test_missing_socket_is_transient(sockdir: Path) -> None:
    """No syslog daemon (no socket file): a transient error, retried later."""
    with pytest.raises(TransientSinkError, match="No such file"):
        send_records(syslog_sink(socket=sockdir / "absent.sock"), EVENT_RECORD)


def test_stale_socket_is_transient(sockdir: Path) -> None:
    """A socket file whose receiver has gone: a transient error."""
    path = sockdir / "stale.sock"
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(str(path))  # closed at once
    with pytest.raises(TransientSinkError, match="refused"):
        send_records(syslog_sink(socket=path), EVENT_RECORD)


def test_stream_socket_is_permanent(sockdir: Path) -> None:
    """A stream socket where the datagram socket should be: a permanent error naming it."""
    path = sockdir / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        with pytest.raises(PermanentSinkError, match="not a datagram socket"):
            send_records(syslog_sink(socket=path), EVENT_RECORD)


def test_stalled_local_reader_never_blocks(sockdir: Path) -> None:
    """A receiver that stops reading fills its queue; the sink waits `timeout` for room
    without blocking the event loop, then raises a transient error."""
    path = sockdir / "stalled.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stalled:
        stalled.bind(str(path))
        sink = syslog_sink(socket=path, timeout=0.3)
        records = [EVENT_RECORD] * 2000  # more than any receive queue holds (512 under systemd)
        elapsed, ticks, error = asyncio.run(ticking(sink.send_records(records)))
    assert isinstance(error, TransientSinkError)
    assert "took nothing for 0.3s" in str(error)
    assert 0.3 <= elapsed < 3
    assert ticks >= 10  # the loop ran all along


def test_a_late_reader_is_waited_for(sockdir: Path) -> None:
    """A reader that starts late, after the sink has filled its queue (and its own send
    buffer), still gets every record in order: a full queue is waited for, not an error."""
    path = sockdir / "late.sock"
    records = [EVENT_RECORD | {"client_port": str(i)} for i in range(2000)]  # > any queue's room
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as late:
        late.bind(str(path))
        late.settimeout(10)

        def read_late() -> list[bytes]:
            time.sleep(0.2)  # the injected fault: the reader is busy elsewhere for a while
            return [late.recv(4096) for _ in records]

        async def scenario() -> list[bytes]:
            reading = asyncio.create_task(asyncio.to_thread(read_late))
            await syslog_sink(socket=path, timeout=5.0).send_records(records)
            return await reading

        received = asyncio.run(scenario())
    ports = [re.findall(rb"client_port=(\d+)", data) for data in received]
    assert ports == [[str(i).encode()] for i in range(2000)]


def test_stalled_tcp_collector_never_blocks() -> None:
    """A collector that accepts but never reads: once the buffers are full the send gives
    up after `timeout` with a transient error, and the event loop ran all along."""

    async def scenario() -> tuple[float, int, BaseException | None]:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
        listener.bind(("127.0.0.1", 0))
        accepted: list[asyncio.StreamWriter] = []

        async def never_read(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(never_read, sock=listener)
        port = listener.getsockname()[1]
        sink = syslog_sink(address=("127.0.0.1", port), protocol="tcp", timeout=0.5)
        big = EVENT_RECORD | {"client": "x" * 250, "server": "y" * 250}

        async def flood() -> None:
            for _ in range(100):  # up to ~60 MB: far past any socket buffers
                await sink.send_records([big] * 1000)

        try:
            return await ticking(flood())
        finally:
            server.close()
            for writer in accepted:
                writer.close()

    elapsed, ticks, error = asyncio.run(scenario())
    assert isinstance(error, TransientSinkError), error
    assert "no progress in 0.5s" in str(error)
    assert elapsed < 8
    assert ticks >= 20


def test_the_collector_connection_is_closed_when_the_worker_ends() -> None:
    """At shutdown (or when a reload replaces the sink) the TCP connection is closed,
    not left for the garbage collector: the collector sees end of stream."""

    async def scenario() -> bytes:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def collector(reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
            await got.put(await reader.read())  # returns at end of stream only

        server = await asyncio.start_server(collector, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = syslog_sink(address=("127.0.0.1", port), protocol="tcp", timeout=2.0)
        worker = ForwardWorker(sink, per_second=100.0)
        task = asyncio.create_task(worker.run())
        worker.offer(Event({"daemon": "sshd", "client_addr": "192.0.2.1"}, time.time()))
        worker.close()
        await task
        try:
            async with asyncio.timeout(5):
                return await got.get()
        finally:
            server.close()

    data = asyncio.run(scenario())
    assert b"daemon=sshd client_addr=192.0.2.1" in data
