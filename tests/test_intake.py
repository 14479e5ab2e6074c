"""daemon/intake.py alone: datagrams from a real AF_UNIX socket (and spool files) into
events, rejections counted by reason, the drain's bound, the second copy of a refusal
dropped, and the socket's own life (bind, refuse a live one, shut at shutdown)."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Into, canary_book, receiver, send_datagrams, send_refusals

from wrapalert.daemon.activity import Activity
from wrapalert.daemon.intake import Intake, open_socket
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.twins import Twins
from wrapalert.daemon.witness import Witness
from wrapalert.logs import LogLimit
from wrapalert.model import Event
from wrapalert.wire import MAX_DATAGRAM, encode

NOW = 1_700_000_000.0
COPY = {"d": "sshd", "a": "192.0.2.7", "p": "812", "r": "40022", "i": "4242"}


class Taken:
    """Intake's `accept`: keeps each event it is handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


@dataclass
class Rig:
    intake: Intake
    path: Path
    taken: Taken
    stats: Stats


@dataclass
class SpoolFile:
    """What a spool pass hands intake (the fields of daemon/spool.py's SpoolFile)."""

    data: bytes | None
    uid: int | None
    reason: str = "bad_spool_file"


def rig_on(sock: socket.socket, path: Path, *, trusted: tuple[int, ...]) -> Rig:
    stats, taken = Stats(), Taken()
    intake = Intake(
        sock,
        target=Into(taken, frozenset(trusted)),
        stats=stats,
        twins=Twins(),
        witness=Witness(stats, lambda: NOW),
        canary=canary_book(stats),
        activity=Activity(),
        now=lambda: NOW,
    )
    return Rig(intake, path, taken, stats)


@pytest.fixture
def rig(sockdir: Path) -> Iterator[Rig]:
    """Intake on a socket it bound in a tmp dir; this process's uid is trusted."""
    path = sockdir / "notify.sock"
    made = rig_on(open_socket(path, 0o666), path, trusted=(os.getuid(),))
    yield made
    made.intake.close(path)


@pytest.fixture
def untrusting(sockdir: Path) -> Iterator[Rig]:
    """Intake that trusts no uid of this process (uid 4242 only)."""
    path = sockdir / "untrusting.sock"
    made = rig_on(open_socket(path, 0o666), path, trusted=(4242,))
    yield made
    made.intake.close(path)


# -- datagrams into events ------------------------------------------------------------


def test_a_valid_datagram_becomes_an_event_with_the_kernels_credentials(rig: Rig) -> None:
    """The sender's uid and pid come from SO_PASSCRED; a trusted uid's report is
    trusted, stamped with intake's clock and counted received."""
    send_refusals(rig.path, "192.0.2.7")
    assert rig.intake.drain() == 1
    (event,) = rig.taken.events
    assert event.fields == {"daemon": "sshd", "client_addr": "192.0.2.7", "verdict": "deny"}
    assert (event.uid, event.pid, event.trusted) == (os.getuid(), os.getpid(), True)
    assert (event.received, event.origin) == (NOW, "socket")
    assert (rig.stats.received, rig.stats.untrusted) == (1, 0)


def test_a_report_from_an_untrusted_uid_is_passed_on_marked_untrusted(untrusting: Rig) -> None:
    """A uid outside trusted_uids is heard, marked untrusted and counted as such."""
    send_refusals(untrusting.path)
    untrusting.intake.drain()
    (event,) = untrusting.taken.events
    assert (event.uid, event.trusted) == (os.getuid(), False)
    assert (untrusting.stats.received, untrusting.stats.untrusted) == (1, 1)


def test_a_datagram_queued_without_credentials_is_untrusted(sockdir: Path) -> None:
    """A datagram queued before SO_PASSCRED was set carries no credentials (pid 0): it
    speaks for nobody, whatever uid sent it."""
    path = sockdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    send_refusals(path)
    made = rig_on(sock, path, trusted=(os.getuid(),))  # sets SO_PASSCRED, too late for it
    try:
        made.intake.drain()
    finally:
        made.intake.close(path)
    (event,) = made.taken.events
    assert (event.uid, event.pid, event.trusted) == (None, None, False)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"WA9\nd=sshd\n", "bad_tag"),
        (b"WA1\na=192.0.2.1\n", "missing_daemon"),
        (b"WA1\nd=sshd\na=not-an-address\n", "bad_addr"),
        (b"WA1\nd=ss\x1bhd\n", "control_char"),
        (b"WA1\nd=sshd\nc=" + b"x" * MAX_DATAGRAM + b"\n", "too_large"),
    ],
)
def test_a_bad_datagram_is_counted_by_reason_and_intake_goes_on(
    rig: Rig, data: bytes, reason: str
) -> None:
    """A rejected datagram is counted under its reason and passes nothing on; the good
    one after it is accepted in the same drain."""
    send_datagrams(rig.path, data, encode({"d": "sshd"}))
    assert rig.intake.drain() == 2
    assert rig.stats.rejected == Counter({reason: 1})
    assert [e.get("daemon") for e in rig.taken.events] == ["sshd"]
    assert rig.stats.received == 1


def test_a_drain_reads_at_most_its_limit_and_leaves_the_rest_queued(rig: Rig) -> None:
    """One wake-up reads at most `limit` datagrams, so timers keep running under a flood;
    the next drain takes the rest."""
    send_refusals(rig.path, count=5)
    assert rig.intake.drain(limit=3) == 3
    assert len(rig.taken.events) == 3
    assert rig.intake.drain(limit=3) == 2
    assert len(rig.taken.events) == 5


def test_an_empty_queue_drains_nothing_and_does_not_block(rig: Rig) -> None:
    """With nothing queued a drain returns at once (EAGAIN), having read nothing."""
    assert rig.intake.drain() == 0
    assert rig.taken.events == []


def test_the_second_copy_of_a_refusal_is_dropped_before_it_counts(rig: Rig) -> None:
    """The hook line's two halves report one refusal with the same `i=$$`: the second is
    counted as a duplicate, never received, never passed on."""
    send_datagrams(rig.path, encode(COPY), encode(COPY), encode(COPY | {"i": "4243"}))
    rig.intake.drain()
    assert [e.get("hook_pid") for e in rig.taken.events] == ["4242", "4243"]
    assert (rig.stats.received, rig.stats.duplicates) == (2, 1)


def test_each_event_passed_on_has_the_witness_finding(rig: Rig, untrusting: Rig) -> None:
    """Every accepted event meets the witness before it is passed on: a report without
    ports is "unknown" (no_ports), an untrusted one is never looked up (unchecked)."""
    send_refusals(rig.path)
    rig.intake.drain()
    send_refusals(untrusting.path)
    untrusting.intake.drain()
    assert [e.transport for e in rig.taken.events + untrusting.taken.events] == [
        "unknown",
        "unknown",
    ]
    assert rig.stats.evidence == Counter({"no_ports": 1})
    assert untrusting.stats.evidence == Counter({"unchecked": 1})


# -- spool files ----------------------------------------------------------------------


def test_spool_files_become_events_attributed_to_their_owner(rig: Rig) -> None:
    """A spool file's event speaks for the uid that owns the file: origin "spool", no
    pid, counted received and spooled."""
    accepted = rig.intake.accept_spool([SpoolFile(encode({"d": "vsftpd"}), os.getuid())])
    assert accepted == 1
    (event,) = rig.taken.events
    assert (event.origin, event.uid, event.pid, event.trusted) == (
        "spool",
        os.getuid(),
        None,
        True,
    )
    assert (rig.stats.received, rig.stats.spooled) == (1, 1)


def test_a_refused_spool_file_is_counted_by_its_reason(rig: Rig) -> None:
    """A file the pass refused (no data) and a file holding a bad datagram are counted as
    rejected, by reason, and are not spooled events."""
    files = [
        SpoolFile(None, 1000, "spool_file_mode"),
        SpoolFile(b"WA1\nd=sshd\na=999.1.1.1\n", os.getuid()),
    ]
    assert rig.intake.accept_spool(files) == 0
    assert rig.stats.rejected == Counter({"spool_file_mode": 1, "bad_addr": 1})
    assert (rig.stats.received, rig.stats.spooled, rig.taken.events) == (0, 0, [])


def test_spool_junk_and_syslog_fallbacks_are_counted(rig: Rig) -> None:
    """Junk a pass removed counts as rejected by reason; fallbacks to syslog count by the
    trust of the uid whose marker claimed them."""
    rig.intake.count_junk(Counter({"stale_spool_file": 3}))
    rig.intake.count_fallbacks(Counter({os.getuid(): 2, 4242: 5}))
    assert rig.stats.rejected == Counter({"stale_spool_file": 3})
    assert rig.stats.syslog_fallbacks == Counter({"trusted": 2, "untrusted": 5})


# -- the socket -------------------------------------------------------------------------


def test_open_socket_refuses_a_socket_a_live_daemon_holds(sockdir: Path) -> None:
    """Binding where another process's socket answers is refused: never steal it."""
    path = sockdir / "notify.sock"
    live = receiver(path)
    try:
        with pytest.raises(OSError, match="in use by a running daemon"):
            open_socket(path, 0o666)
    finally:
        live.close()


def test_open_socket_replaces_a_stale_socket(sockdir: Path) -> None:
    """A socket file nobody reads any more (a crashed daemon's) is replaced."""
    path = sockdir / "notify.sock"
    receiver(path).close()  # the file stays, nobody behind it
    sock = open_socket(path, 0o666)
    try:
        send_refusals(path)
        assert sock.recv(100)
    finally:
        sock.close()


def test_open_socket_refuses_a_path_that_is_not_a_socket(sockdir: Path) -> None:
    """A regular file at the socket's path is left alone and named in the error."""
    path = sockdir / "notify.sock"
    path.write_text("not mine")
    with pytest.raises(OSError, match="exists and is not a socket"):
        open_socket(path, 0o666)
    assert path.read_text() == "not mine"


def test_open_socket_gives_the_path_its_mode(sockdir: Path) -> None:
    """The socket gets `socket_mode`: the spawning services run as many users."""
    path = sockdir / "notify.sock"
    sock = open_socket(path, 0o620)
    try:
        assert path.stat().st_mode & 0o777 == 0o620
    finally:
        sock.close()


def test_after_refuse_new_senders_fail_and_the_queue_still_drains(rig: Rig) -> None:
    """At shutdown the bound path goes: a new send fails (the client then spools), while
    what the kernel had queued is still read."""
    send_refusals(rig.path, "192.0.2.1")
    rig.intake.refuse_new(rig.path)
    with pytest.raises(FileNotFoundError):
        send_refusals(rig.path, "192.0.2.2")
    rig.intake.drain()
    assert [e.get("client_addr") for e in rig.taken.events] == ["192.0.2.1"]


def test_refuse_new_leaves_a_socket_systemd_passed_alone(rig: Rig) -> None:
    """systemd's socket (no path of ours) outlives the daemon and keeps what queues for the
    next start: refuse_new touches nothing."""
    rig.intake.refuse_new(None)
    send_refusals(rig.path)
    rig.intake.drain()
    assert len(rig.taken.events) == 1


# -- bounded logging ------------------------------------------------------------------


def test_log_limit_allows_per_minute_then_reports_what_it_suppressed() -> None:
    """At most `per_minute` lines per key in a minute; the first line of the next minute
    says how many were left out."""
    now = [0.0]
    limit = LogLimit(per_minute=2, now=lambda: now[0])
    assert [limit.allow("bad_tag") for _ in range(5)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    assert limit.allow("too_large") == (True, 0)  # another key, its own budget
    now[0] = 60.0
    assert limit.allow("bad_tag") == (True, 3)
