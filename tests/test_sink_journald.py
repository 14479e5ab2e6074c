"""journald sink against a real systemd-journald (private mount namespace): structured
fields, hostile values, held counts, entries too large for a datagram, and receivers that
are missing or stop reading."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EVENT_RECORD,
    EVENT_RECORD_TEXT,
    HELD_RECORD,
    HELD_RECORD_TEXT,
    HOSTILE_FIELDS,
    WRAPALERT,
    report_through_daemon,
    require,
    send_records,
    syslog_sink,
    ticking,
    wait_until,
    write_config,
)

from wrapalert import config
from wrapalert.sinks import EventSink, build
from wrapalert.sinks.base import TransientSinkError
from wrapalert.sinks.journald import MESSAGE_ID, JournaldSink, JournaldSinkConfig, entry

JOURNALD = Path("/lib/systemd/systemd-journald")
UNSHARE = ("unshare", "--mount", "--propagation", "private")
JOURNALCTL = ("journalctl", "-o", "json", "--all", "-D")  # --all: long and binary fields too
# journald's own settings: nothing from the kernel or to syslog, no rate limit, memory only.
JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToWall=no
RateLimitIntervalSec=0
"""


class Journald:
    """systemd-journald run by hand in a private mount namespace (a tmpfs on /run), its
    socket directory and its journal bind-mounted from a directory of ours,
    so this process can send to it and `journalctl -D` can read what it stored."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wa-jd-", dir="/tmp"))  # short: AF_UNIX paths
        self.sockets = self.dir / "journal"  # /run/systemd/journal inside
        self.journal = self.dir / "log"  # /run/log/journal inside
        self.sockets.mkdir()
        self.journal.mkdir()
        (self.dir / "journald.conf").write_text(JOURNALD_CONF)
        self.socket = self.sockets / "socket"
        self.dev_log = self.sockets / "dev-log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait for its sd_notify READY=1: its sockets are open then."""
        # A tmpfs on all of /run, not on /run/systemd and /run/log: those need not exist
        # (a tree that systemd never booted has no /run/log). Our settings are the last
        # drop-in, whatever /etc/systemd holds.
        script = (
            "set -e; mount -t tmpfs tmpfs /run;"
            " mkdir -p /run/systemd/journal /run/log/journal /run/systemd/journald.conf.d;"
            ' mount --bind "$1/journal" /run/systemd/journal;'
            ' mount --bind "$1/log" /run/log/journal;'
            ' cp "$1/journald.conf" /run/systemd/journald.conf.d/zz-wrapalert-test.conf;'
            f" exec {JOURNALD}"
        )
        notify_path = self.dir / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(20)
            with (self.dir / "stderr").open("ab") as stderr:
                self.proc = subprocess.Popen(
                    [*UNSHARE, "sh", "-c", script, "sh", str(self.dir)],
                    env=os.environ | {"NOTIFY_SOCKET": str(notify_path)},
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                )
            while b"READY=1" not in notify.recv(4096):
                pass

    def entries(self) -> list[dict[str, Any]]:
        """Our entries (SYSLOG_IDENTIFIER=wrapalert), every field in full, oldest first."""
        out = subprocess.run(
            [*JOURNALCTL, str(self.journal), "SYSLOG_IDENTIFIER=wrapalert"],
            capture_output=True,
            check=True,
            timeout=20,
        ).stdout
        return [json.loads(line) for line in out.splitlines()]

    def wait(self, count: int) -> list[dict[str, Any]]:
        """Our entries, once at least `count` have been stored."""
        wait_until(lambda: len(self.entries()) >= count, 15, f"{count} journal entries")
        return self.entries()

    def sink(self, **kw: Any) -> JournaldSink:
        sink = build(replace(JournaldSinkConfig(socket=self.socket), **kw))
        assert isinstance(sink, JournaldSink)
        assert isinstance(sink, EventSink)
        return sink

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def journald() -> Iterator[Journald]:
    require(JOURNALD.exists(), f"{JOURNALD} is missing (apt-get install systemd)")
    require(shutil.which("unshare") is not None, "unshare is missing (apt-get install util-linux)")
    require(os.geteuid() == 0, "journald in a private mount namespace needs root")
    receiver = Journald()
    try:
        receiver.start()
        yield receiver
    finally:
        print((receiver.dir / "stderr").read_text(errors="replace"))
        receiver.close()


def text(value: object) -> str:
    """A field as journalctl's JSON gives it: a string, or bytes (as numbers) when it holds
    control characters."""
    if isinstance(value, list):
        return bytes(value).decode()
    assert isinstance(value, str)
    return value


@pytest.mark.system
def test_event_round_trip_with_every_field(journald: Journald) -> None:
    """A trusted event becomes one entry: the syslog sink's text as MESSAGE, warning,
    authpriv, identifier wrapalert, our fixed MESSAGE_ID, and a WRAPALERT_ field for each
    record field, sent by us over the native protocol."""
    send_records(journald.sink(), EVENT_RECORD)
    (found,) = journald.wait(1)
    assert found["MESSAGE"] == EVENT_RECORD_TEXT
    assert (found["PRIORITY"], found["SYSLOG_FACILITY"]) == ("4", "10")
    assert (found["SYSLOG_IDENTIFIER"], found["MESSAGE_ID"]) == ("wrapalert", MESSAGE_ID)
    assert MESSAGE_ID == "e774a4dd995448ef9e0b04a228a15acb"
    assert (found["_TRANSPORT"], found["_PID"]) == ("journal", str(os.getpid()))
    ours = {k: v for k, v in found.items() if k.startswith("WRAPALERT_")}
    expected = {f"WRAPALERT_{k.upper()}": str(v) for k, v in EVENT_RECORD.items()}
    expected["WRAPALERT_TRUSTED"] = "true"
    assert ours == expected


@pytest.mark.system
def test_untrusted_event_is_a_notice(journald: Journald) -> None:
    """An untrusted event is a notice (5) marked WRAPALERT_TRUSTED=false; a sender without
    credentials has no WRAPALERT_UID at all."""
    send_records(journald.sink(), EVENT_RECORD | {"trusted": False, "uid": None})
    (found,) = journald.wait(1)
    assert (found["PRIORITY"], found["WRAPALERT_TRUSTED"]) == ("5", "false")
    assert "WRAPALERT_UID" not in found


@pytest.mark.system
def test_hostile_values_cannot_forge_an_entry_or_a_field(journald: Journald) -> None:
    """A value holding newlines and would-be fields arrives whole in its own field
    (length-prefixed), MESSAGE stays one escaped line, and no field is forged or replaced;
    a value past 64 KiB is cut there."""
    forged = "x\nMESSAGE_ID=00000000000000000000000000000000\nPRIORITY=0\n_PID=1\n"
    record = EVENT_RECORD | HOSTILE_FIELDS | {"client_name": forged, "client": "y" * 100_000}
    send_records(
        journald.sink(), record, HELD_RECORD
    )  # the held entry behind it: proof nothing else came
    found, held = journald.wait(2)
    assert len(journald.entries()) == 2
    assert (found["MESSAGE_ID"], found["PRIORITY"], found["_PID"]) == (
        MESSAGE_ID,
        "4",
        str(os.getpid()),
    )
    assert text(found["WRAPALERT_CLIENT_NAME"]) == forged
    for key in ("daemon", "client_addr", "user"):
        assert text(found[f"WRAPALERT_{key.upper()}"]) == HOSTILE_FIELDS[key]
    assert text(found["WRAPALERT_CLIENT"]) == "y" * 65536
    message = text(found["MESSAGE"])
    assert message.isascii()
    assert all(" " <= c <= "~" for c in message)
    assert message.startswith("refused verdict=deny trusted=true uid=0 daemon=")
    assert held["MESSAGE"] == HELD_RECORD_TEXT


@pytest.mark.system
def test_held_record_counts_the_held_events(journald: Journald) -> None:
    """A held record is one warning entry whose fields say how many events were held, and
    from which daemons."""
    send_records(journald.sink(), HELD_RECORD)
    (found,) = journald.wait(1)
    assert (found["MESSAGE"], found["PRIORITY"]) == (HELD_RECORD_TEXT, "4")
    assert (found["WRAPALERT_TYPE"], found["WRAPALERT_EVENTS"]) == ("held", "90")
    assert json.loads(found["WRAPALERT_DAEMONS"]) == {"sshd": 45, "vsftpd": 45}
    assert (found["WRAPALERT_FIRST"], found["WRAPALERT_LAST"]) == ("1714564800.5", "1714564830.25")
    assert found["WRAPALERT_OTHER_DAEMONS"] == "0"


@pytest.mark.system
def test_entry_too_large_for_a_datagram_goes_as_a_memfd(journald: Journald) -> None:
    """An entry larger than any datagram can be (the kernel says EMSGSIZE) still arrives,
    whole, passed as a sealed memfd."""
    big = {key: key[0] * 60_000 for key in ("user", "client", "server", "host")}
    record = EVENT_RECORD | big
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.connect(str(journald.socket))
        with pytest.raises(OSError, match="too long") as info:
            probe.send(entry(record))
        assert info.value.errno == errno.EMSGSIZE
    send_records(journald.sink(), record)
    (found,) = journald.wait(1)
    for key, value in big.items():
        assert found[f"WRAPALERT_{key.upper()}"] == value
    assert found["WRAPALERT_DAEMON"] == "sshd"


@pytest.mark.system
def test_syslog_sink_lines_parse_in_journald(journald: Journald) -> None:
    """The syslog sink's RFC 3164 line, sent to journald's own syslog socket (what /dev/log
    is under systemd), is parsed into identifier, pid, facility, priority and MESSAGE."""
    send_syslog = syslog_sink(socket=journald.dev_log)
    asyncio.run(send_syslog.send_records([EVENT_RECORD, EVENT_RECORD | {"trusted": False}]))
    trusted, untrusted = journald.wait(2)
    assert trusted["_TRANSPORT"] == "syslog"
    assert (trusted["SYSLOG_IDENTIFIER"], trusted["SYSLOG_PID"]) == ("wrapalert", str(os.getpid()))
    assert (trusted["SYSLOG_FACILITY"], trusted["PRIORITY"]) == ("10", "4")
    assert trusted["MESSAGE"] == EVENT_RECORD_TEXT
    assert untrusted["PRIORITY"] == "5"


@pytest.mark.system
def test_daemon_forwards_refused_connections_to_journald(sockdir: Path, journald: Journald) -> None:
    """Configured with a journald sink, the daemon stores one entry per refused connection
    with the client's values in WRAPALERT_ fields."""
    path = write_config(
        sockdir,
        sinks=f'[[sink]]\ntype = "journald"\nsocket = "{journald.socket}"\n',
        digests=False,
    )
    cfg = config.load(path)

    report_through_daemon(
        cfg, ("192.0.2.1", "192.0.2.2"), "n=evil.example", then=lambda: journald.wait(2)
    )
    entries = journald.entries()
    assert [e["WRAPALERT_CLIENT_ADDR"] for e in entries] == ["192.0.2.1", "192.0.2.2"]
    for found in entries:
        assert (found["WRAPALERT_DAEMON"], found["WRAPALERT_CLIENT_NAME"]) == (
            "sshd",
            "evil.example",
        )
        assert (found["WRAPALERT_TRUSTED"], found["WRAPALERT_UID"]) == ("true", str(os.getuid()))
        assert found["MESSAGE_ID"] == MESSAGE_ID


# -- receivers that are missing or stalled (plain sockets: no journald needed) -----------


def plain_sink(path: Path, **kw: Any) -> JournaldSink:
    sink = build(replace(JournaldSinkConfig(socket=path), **kw))
    assert isinstance(sink, JournaldSink)
    return sink


def test_missing_socket_is_transient(sockdir: Path) -> None:
    """No journald (no socket file): a transient error, retried later."""
    with pytest.raises(TransientSinkError, match="No such file"):
        send_records(plain_sink(sockdir / "absent"), EVENT_RECORD)


def test_stale_socket_is_transient(sockdir: Path) -> None:
    """journald gone, its socket file left behind: a transient error."""
    path = sockdir / "stale"
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(str(path))  # closed at once
    with pytest.raises(TransientSinkError, match="refused"):
        send_records(plain_sink(path), EVENT_RECORD)


def test_stalled_journald_never_blocks(sockdir: Path) -> None:
    """A journald that stops reading fills its queue; the sink waits `timeout` for room
    without blocking the event loop, then raises a transient error."""
    path = sockdir / "stalled"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stalled:
        stalled.bind(str(path))
        sink = plain_sink(path, timeout=0.3)
        elapsed, ticks, error = asyncio.run(ticking(sink.send_records([EVENT_RECORD] * 2000)))
    assert isinstance(error, TransientSinkError)
    assert "took nothing for 0.3s" in str(error)
    assert 0.3 <= elapsed < 3
    assert ticks >= 10


# --- the daemon's own log lines, through a journal stream ------------------------------------


def journal_stderr(sockets: Path, identifier: str) -> socket.socket:
    """What systemd makes of StandardError=journal: a stream to journald, with the header
    sd_journal_stream_fd() sends (priority info, level prefixes parsed)."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(str(sockets / "stdout"))
    stream.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    stream.shutdown(socket.SHUT_RD)
    return stream


@pytest.mark.system
def test_errors_reach_the_journal_at_priority_err(journald: Journald, sockdir: Path) -> None:
    """Under systemd (stderr a journal stream named in JOURNAL_STREAM), a refused reload is
    stored at priority 3, so `journalctl -p err` finds it; info lines stay at 6."""
    path = write_config(sockdir)
    stream = journal_stderr(journald.sockets, "wrapalert")
    st = os.fstat(stream.fileno())
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sockdir / "systemd.sock"))
    notify.settimeout(60)
    proc = subprocess.Popen(
        [WRAPALERT, "run", "-c", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stream.fileno(),
        env={
            **os.environ,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "NOTIFY_SOCKET": str(sockdir / "systemd.sock"),
        },
    )
    stream.close()
    try:
        # READY=1 comes once SIGHUP is handled (before it, SIGHUP would end the daemon).
        while b"READY=1" not in notify.recv(4096):
            pass
        path.write_text(path.read_text().replace('group_wait = "500ms"', 'group_wait = "soon"'))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_refused" in _journal(journald, "-p", "err"), 20, "the error")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in _journal(journald).splitlines()]
    by_event = {re.search(r"event='(\w+)'", e["MESSAGE"]).group(1): e for e in entries}  # type: ignore[union-attr]
    assert by_event["reload_refused"]["PRIORITY"] == "3"
    assert all(e["MESSAGE"].startswith("timestamp=") for e in entries)  # the prefix consumed
    infos = [e for e in entries if "level='info'" in e["MESSAGE"]]
    assert infos
    assert {e["PRIORITY"] for e in infos} == {"6"}


def _journal(receiver: Journald, *args: str) -> str:
    return subprocess.run(
        [*JOURNALCTL, str(receiver.journal), *args, "SYSLOG_IDENTIFIER=wrapalert"],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
