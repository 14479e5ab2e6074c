"""The per-connection client, run exactly as libwrap's spawn runs it.

Every subprocess test starts the real interpreter as
``python3 -I -S notify.py KEY=VALUE...`` and talks to real AF_UNIX datagram
sockets bound in a temporary directory (SO_PASSCRED set before anything is
sent). ``socket=``, ``spool=`` and ``syslog=`` are always given, so no test
touches /run/wrapalert, /var/spool/wrapalert or /dev/log.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import filled

from wrapalert import notify

# The interpreter itself, never a shim or wrapper script: libwrap runs /usr/bin/python3.
REAL_PY = str(Path(sys.executable).resolve())
NOTIFY_PATH = Path(notify.__file__)
# libwrap hands the client the wrapped daemon's environment; keep ours out of it.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
Listen = Callable[[Path], socket.socket]
CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
HOST = socket.gethostname()
MAX_DATAGRAM = 4096
NOBODY = 65534
# Wall-clock bound for a whole run seen from outside: the client's own budget is
# 250 ms, plus interpreter start-up, plus scheduler noise on a loaded CI machine.
WALL_BOUND = 0.5

ALL_FIELDS = {
    "d": "sshd",
    "p": "4242",
    "u": "unknown",
    "c": "root@192.0.2.7",
    "a": "192.0.2.7",
    "n": "paranoid",
    "h": "192.0.2.7",
    "s": "sshd@192.0.2.1",
    "A": "192.0.2.1",
    "r": "51234",
    "v": "allow",
}
ALL_ARGS = [f"{key}={value}" for key, value in ALL_FIELDS.items()]


@dataclass(frozen=True)
class Paths:
    """Where one test's client delivers: daemon socket, spool dir, syslog socket."""

    sock: Path
    spool: Path
    log: Path

    def settings(self) -> list[str]:
        return [f"socket={self.sock}", f"spool={self.spool}", f"syslog={self.log}"]


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes
    pid: int
    elapsed: float


@dataclass(frozen=True)
class Datagram:
    data: bytes
    pid: int
    uid: int
    gid: int


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    return Paths(sock=tmp_path / "notify.sock", spool=spool, log=tmp_path / "log.sock")


@pytest.fixture
def listen() -> Iterator[Callable[[Path], socket.socket]]:
    """Bind receivers with SO_PASSCRED on before anything can be queued."""
    opened: list[socket.socket] = []

    def bind(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        opened.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(path))
        sock.settimeout(5)
        return sock

    yield bind
    for sock in opened:
        sock.close()


@pytest.fixture
def full_queue(paths: Paths, listen: Listen) -> Iterator[socket.socket]:
    """A live daemon socket that never reads, its queue filled until EAGAIN."""
    receiver = listen(paths.sock)
    with filled(paths.sock):
        yield receiver


def run_client(
    *args: str | bytes,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
    umask: int = -1,
) -> Result:
    argv: list[str | bytes] = [*prefix, REAL_PY, "-I", "-S", str(NOTIFY_PATH), *args]
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV if env is None else env,
        umask=umask,
    )
    out, err = proc.communicate(timeout=10)
    return Result(proc.returncode, out, err, proc.pid, time.monotonic() - start)


def client(paths: Paths, *args: str | bytes, umask: int = -1) -> Result:
    return run_client(*args, *paths.settings(), umask=umask)


def receive(sock: socket.socket) -> Datagram:
    data, ancdata, flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(CRED.size))
    assert not flags & socket.MSG_TRUNC
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, uid, gid = CRED.unpack(payload[: CRED.size])
            return Datagram(data, pid, uid, gid)
    return Datagram(data, 0, NOBODY, NOBODY)


def pending(sock: socket.socket) -> list[bytes]:
    """Everything still queued on a receiver, without waiting."""
    sock.setblocking(False)
    queued = []
    while True:
        try:
            queued.append(sock.recv(65536))
        except BlockingIOError:
            return queued


def lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")  # strict: the wire format is valid UTF-8
    assert text.endswith("\n")
    return text[:-1].split("\n")


def fields(data: bytes) -> dict[str, str]:
    """The key=value lines of a WA1 datagram (asserting the tag and no repeated key)."""
    tag, *body = lines(data)
    assert tag == "WA1"
    pairs = [line.partition("=")[::2] for line in body]
    assert len({key for key, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def spooled(spool: Path) -> list[Path]:
    return sorted(spool.iterdir())


def without_time(data: bytes) -> bytes:
    return re.sub(rb"(?m)^t=\d+\.\d{6}$", b"t=T", data)


def imported_modules(stderr: bytes) -> set[str]:
    """Module names from `-X importtime` output."""
    found = re.findall(r"(?m)^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)\s*$", stderr.decode())
    return set(found)


def make_scenario(name: str, paths: Paths, listen: Listen) -> None:
    """Arrange for the client's run to end as `name` says."""
    if name == "sent":
        listen(paths.sock)
    elif name == "spooled":
        pass
    elif name == "syslog":
        paths.spool.rmdir()
        listen(paths.log)
    else:  # nowhere: every route fails
        paths.spool.rmdir()


SCENARIOS = ["sent", "spooled", "syslog", "nowhere"]
HOSTILE_ARGS: list[str | bytes] = [
    "d=sshd",
    "--help",
    "-c",
    "print(1)",
    "u=%n%s%x",
    b"n=\xff\xfe\x80",
    "h=a\nb",
    "x=1",
]


# --- what the client loads -------------------------------------------------------


@pytest.mark.parametrize("scenario", ["sent", "spooled", "syslog"])
def test_imports_nothing_but_socket_beyond_bare_interpreter(
    scenario: str, paths: Paths, listen: Listen
) -> None:
    """Whatever route it takes, the client imports exactly `_socket` beyond a bare interpreter."""
    make_scenario(scenario, paths, listen)
    bare = subprocess.run(
        [REAL_PY, "-X", "importtime", "-I", "-S", "-c", "pass"],
        capture_output=True,
        env=ENV,
        check=True,
    )
    argv = [REAL_PY, "-X", "importtime", "-I", "-S", str(NOTIFY_PATH), *ALL_ARGS]
    ran = subprocess.run([*argv, *paths.settings()], capture_output=True, env=ENV, check=True)
    baseline = imported_modules(bare.stderr)
    assert "encodings" in baseline  # the parser works on this interpreter's output
    assert imported_modules(ran.stderr) - baseline == {"_socket"}


# --- delivery to a live daemon ---------------------------------------------------


def test_datagram_has_tag_and_exactly_the_given_fields_plus_t_and_h(
    paths: Paths, listen: Listen
) -> None:
    """A delivered datagram is WA1 with every given field unchanged, plus t and H, and no more."""
    receiver = listen(paths.sock)
    client(paths, *ALL_ARGS)
    got = fields(receive(receiver).data)
    assert {key: got[key] for key in ALL_FIELDS} == ALL_FIELDS
    assert set(got) == set(ALL_FIELDS) | {"t", "H"}


def test_datagram_time_is_clients_wall_clock(paths: Paths, listen: Listen) -> None:
    """`t` is the client's wall-clock time, with microseconds, taken during the run."""
    receiver = listen(paths.sock)
    before = time.time()
    client(paths, "d=sshd")
    after = time.time()
    t = fields(receive(receiver).data)["t"]
    assert re.fullmatch(r"\d+\.\d{6}", t)
    assert before - 0.001 <= float(t) <= after + 0.001


def test_datagram_host_is_this_host(paths: Paths, listen: Listen) -> None:
    """`H` is this machine's host name."""
    receiver = listen(paths.sock)
    client(paths, "d=sshd")
    assert fields(receive(receiver).data)["H"] == HOST


def test_datagram_carries_kernel_credentials_of_client(paths: Paths, listen: Listen) -> None:
    """The kernel attaches the client's own pid and our uid and gid to the datagram."""
    receiver = listen(paths.sock)
    result = client(paths, "d=sshd")
    got = receive(receiver)
    assert (got.pid, got.uid, got.gid) == (result.pid, os.getuid(), os.getgid())


def test_delivered_event_is_sent_once_and_not_spooled_or_logged(
    paths: Paths, listen: Listen
) -> None:
    """A delivered event is one datagram only: no second copy, no spool file, no syslog line."""
    receiver = listen(paths.sock)
    log = listen(paths.log)
    client(paths, "d=sshd")
    assert len(pending(receiver)) == 1
    assert spooled(paths.spool) == []
    assert pending(log) == []


def test_event_without_fields_is_still_reported(paths: Paths, listen: Listen) -> None:
    """With no field arguments at all the client still reports the event (tag, t, H)."""
    receiver = listen(paths.sock)
    client(paths)
    assert set(fields(receive(receiver).data)) == {"t", "H"}


# --- arguments -------------------------------------------------------------------


def test_unknown_keys_are_ignored(paths: Paths, listen: Listen) -> None:
    """Keys outside the fixed set (long names, wrong case, empty) are not sent."""
    receiver = listen(paths.sock)
    client(paths, "d=sshd", "daemon=evil", "D=evil", "x=evil", "=evil", "dd=evil")
    assert set(fields(receive(receiver).data)) == {"d", "t", "H"}


def test_arguments_without_equals_are_ignored(paths: Paths, listen: Listen) -> None:
    """Arguments without `=` (option look-alikes included) are skipped, the rest still sent."""
    receiver = listen(paths.sock)
    client(paths, "sshd", "--help", "-c", "-", "d=sshd", "a")
    got = fields(receive(receiver).data)
    assert set(got) == {"d", "t", "H"}
    assert got["d"] == "sshd"


def test_value_is_split_at_first_equals(paths: Paths, listen: Listen) -> None:
    """`u=a=b` sends user `a=b`: only the first `=` separates key and value."""
    receiver = listen(paths.sock)
    client(paths, "u=a=b", "c==x=")
    got = fields(receive(receiver).data)
    assert (got["u"], got["c"]) == ("a=b", "=x=")


@pytest.mark.parametrize(
    "value",
    ["--version", "-c", "%n%s%x%%", "../../etc/passwd", "fe80::1%eth0", "a@b:c=d", ""],
)
def test_hostile_values_pass_as_plain_data(paths: Paths, listen: Listen, value: str) -> None:
    """Values that look like options, format strings or paths arrive byte for byte."""
    receiver = listen(paths.sock)
    client(paths, f"u={value}")
    assert fields(receive(receiver).data)["u"] == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\nb", "a_b"),
        ("a\rb", "a_b"),
        ("a\tb\x01c\x1bd", "a_b_c_d"),
        ("a\x7fb", "a_b"),
        ("a\x85b\x9fc", "a__b__c"),  # C1 controls: two UTF-8 bytes each, as libwrap sees them
        ("a b;c$d`e|f", "a_b_c_d_e_f"),  # shell syntax, as libwrap's own filter does
    ],
)
def test_control_characters_become_underscore(
    paths: Paths, listen: Listen, value: str, expected: str
) -> None:
    """Control characters and every other byte outside libwrap's 73 become `_`."""
    receiver = listen(paths.sock)
    client(paths, f"n={value}")
    assert fields(receive(receiver).data)["n"] == expected


def test_newline_cannot_inject_a_field(paths: Paths, listen: Listen) -> None:
    """A value containing `\\nH=...\\nt=...` stays inside its own line."""
    receiver = listen(paths.sock)
    client(paths, "u=x\nH=forged\nt=1\nWA1")
    got = receive(receiver).data
    assert len(lines(got)) == 1 + 3  # tag, u, t, H
    assert fields(got)["u"] == "x_H=forged_t=1_WA1"


@pytest.mark.parametrize("locale", ["C", "C.UTF-8", "POSIX"])
def test_invalid_utf8_argv_becomes_replacement_characters(
    paths: Paths, listen: Listen, locale: str
) -> None:
    """Bytes that are not UTF-8 in argv become `_`, one per byte, as libwrap would make them."""
    receiver = listen(paths.sock)
    env = {**ENV, "LC_ALL": locale}
    run_client(b"d=ss\xffhd", b"n=\xc3", b"u=\xed\xa0\x80", *paths.settings(), env=env)
    got = fields(receive(receiver).data)  # decodes strictly
    assert got["d"] == "ss_hd"
    assert got["n"] == "_"
    assert got["u"] == "___"


@pytest.mark.parametrize(
    "value",
    [b"x" * 1000, "é".encode() * 300, b"\xff" * 300, b"\xc2\x85" * 300, "€".encode() * 300],
    ids=["ascii", "two-byte", "invalid", "c1-control", "three-byte"],
)
def test_long_value_is_capped_at_255_bytes(paths: Paths, listen: Listen, value: bytes) -> None:
    """Every value is cut to at most 255 bytes of valid UTF-8, whatever it is made of."""
    receiver = listen(paths.sock)
    client(paths, b"c=" + value)
    sent = fields(receive(receiver).data)["c"].encode()
    assert 0 < len(sent) <= notify.MAX_VALUE
    if value.isascii():
        assert sent == value[: notify.MAX_VALUE]


@pytest.mark.parametrize(
    "value", [b"x" * 1000, "€".encode() * 300, b"\xff" * 300], ids=["ascii", "utf8", "invalid"]
)
def test_datagram_fits_4096_bytes_with_every_field_at_maximum(
    paths: Paths, listen: Listen, value: bytes
) -> None:
    """Every field at its longest, the datagram still fits in 4096 bytes and arrives whole."""
    receiver = listen(paths.sock)
    client(paths, *(key.encode() + b"=" + value for key in ALL_FIELDS))
    got = receive(receiver).data
    assert set(fields(got)) == set(ALL_FIELDS) | {"t", "H"}
    assert len(got) <= MAX_DATAGRAM


def test_client_time_cannot_be_set_by_caller(paths: Paths, listen: Listen) -> None:
    """`t=` on the command line is ignored: the client always sends its own clock."""
    receiver = listen(paths.sock)
    before = time.time()
    client(paths, "t=1.000000", "d=sshd", "t=2")
    assert float(fields(receive(receiver).data)["t"]) >= before - 0.001


def test_client_host_cannot_be_set_by_caller(paths: Paths, listen: Listen) -> None:
    """`H=` on the command line is ignored: the client always sends this host's name."""
    receiver = listen(paths.sock)
    client(paths, "H=forged.example", "d=sshd")
    assert fields(receive(receiver).data)["H"] == HOST


def test_client_settings_are_not_sent(paths: Paths, listen: Listen) -> None:
    """`socket=`, `spool=` and `syslog=` configure the client and never appear on the wire."""
    receiver = listen(paths.sock)
    client(paths, "d=sshd")
    got = receive(receiver).data
    assert set(fields(got)) == {"d", "t", "H"}
    assert str(paths.spool).encode() not in got


# --- process hygiene -------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_exit_code_is_always_zero(scenario: str, paths: Paths, listen: Listen) -> None:
    """The client exits 0 whether it delivered, spooled, logged or failed everywhere."""
    make_scenario(scenario, paths, listen)
    assert client(paths, *HOSTILE_ARGS).returncode == 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_writes_nothing_to_stdout_or_stderr(scenario: str, paths: Paths, listen: Listen) -> None:
    """The client prints nothing, even for option-like or undecodable arguments."""
    make_scenario(scenario, paths, listen)
    result = client(paths, *HOSTILE_ARGS)
    assert (result.stdout, result.stderr) == (b"", b"")


def run_with_open_stdin(paths: Paths, data: bytes) -> tuple[Result, int]:
    """Run the client with stdin on a pipe we keep open; return the run and the read end."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    start = time.monotonic()
    proc = subprocess.Popen(
        [REAL_PY, "-I", "-S", str(NOTIFY_PATH), "d=sshd", *paths.settings()],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        os.close(write_end)
    return Result(proc.returncode, out, err, proc.pid, time.monotonic() - start), read_end


def test_open_stdin_does_not_delay_exit(paths: Paths, listen: Listen) -> None:
    """A stdin pipe that never reaches EOF does not hold the client up at all.

    The bound is 0.2 s, under the 250 ms timer that would end a blocked read,
    and about ten times a normal run.
    """
    receiver = listen(paths.sock)
    result, read_end = run_with_open_stdin(paths, b"")
    os.close(read_end)
    assert result.elapsed < 0.2
    assert fields(receive(receiver).data)["d"] == "sshd"


def test_stdin_is_never_read(paths: Paths, listen: Listen) -> None:
    """Bytes waiting on stdin are still there after the client has run."""
    listen(paths.sock)
    _result, read_end = run_with_open_stdin(paths, b"not for you\n")
    os.set_blocking(read_end, False)
    try:
        assert os.read(read_end, 100) == b"not for you\n"
    finally:
        os.close(read_end)


# Puts an inherited fd at an exact number, then execs the client (same pid), as a
# wrapped daemon would have it: `python -c TRAMPOLINE FROM TO argv...`.
TRAMPOLINE = """
import os, sys
f, t = int(sys.argv[1]), int(sys.argv[2])
if f != t:
    os.dup2(f, t)
    os.close(f)
os.execv(sys.argv[3], sys.argv[3:])
"""


@pytest.mark.usefixtures("full_queue")
@pytest.mark.parametrize(("kind", "target"), [("pipe", 3), ("pipe", 1000), ("socket", 5)])
def test_inherited_fds_are_closed_at_start(kind: str, target: int, paths: Paths) -> None:
    """An inherited fd is closed at start: its peer sees EOF before the client has spooled.

    The full queue keeps the client retrying for about 100 ms after it closed its
    fds; it spools only then, and exits after that. An empty spool at EOF therefore
    proves the client closed the fd itself, not the kernel tidying up at exit
    (checking that the process is still alive would race with exit's fd teardown).
    """
    if kind == "socket":
        ours, theirs = socket.socketpair()
        watched, passed = ours.detach(), theirs.detach()
    else:
        watched, passed = os.pipe()
    client_argv = [REAL_PY, "-I", "-S", str(NOTIFY_PATH), "d=sshd", *paths.settings()]
    proc = subprocess.Popen(
        [REAL_PY, "-I", "-S", "-c", TRAMPOLINE, str(passed), str(target), *client_argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        pass_fds=(passed,),
    )
    try:
        os.close(passed)
        readable, _, _ = select.select([watched], [], [], 5)
        spooled_at_eof = spooled(paths.spool)
        assert readable
        assert os.read(watched, 1) == b""  # EOF: no writer left anywhere
        assert spooled_at_eof == []
    finally:
        proc.wait(timeout=10)
        os.close(watched)


# --- daemon down: the spool --------------------------------------------------------


def make_down(how: str, paths: Paths, listen: Listen) -> Paths:
    """Leave the daemon socket path in one of the states a dead daemon leaves it in."""
    if how == "stale":
        listen(paths.sock).close()  # the file stays, nobody reads: ECONNREFUSED
    elif how == "regular-file":
        paths.sock.write_bytes(b"")
    elif how == "fifo":
        os.mkfifo(paths.sock)
    elif how == "directory":
        paths.sock.mkdir()
    elif how == "path-too-long":
        long_dir = paths.sock.parent / ("d" * 120)
        long_dir.mkdir()
        return Paths(long_dir / "notify.sock", paths.spool, paths.log)
    return paths  # "missing": ENOENT


DOWN = ["missing", "stale", "regular-file", "fifo", "directory", "path-too-long"]


@pytest.mark.parametrize("how", DOWN)
def test_daemon_down_spools_exactly_one_file(how: str, paths: Paths, listen: Listen) -> None:
    """With no daemon listening (ENOENT, ECONNREFUSED, ...), the event becomes one spool file."""
    paths = make_down(how, paths, listen)
    client(paths, *ALL_ARGS)
    (spool_file,) = spooled(paths.spool)
    assert fields(spool_file.read_bytes())["a"] == ALL_FIELDS["a"]


def test_daemon_down_spools_without_waiting(paths: Paths) -> None:
    """A missing daemon socket is spooled at once, without the full-queue retry."""
    client(paths, "d=sshd")
    (spool_file,) = spooled(paths.spool)
    started = int(spool_file.name.split(".")[0]) / 1e6
    assert spool_file.stat().st_mtime - started < 0.04  # kernel coarse clock: a tick or two


def test_spool_file_is_mode_0600_even_with_umask_0(paths: Paths) -> None:
    """The spool file is created 0600 regardless of the inherited umask."""
    client(paths, "d=sshd", umask=0)
    (spool_file,) = spooled(paths.spool)
    assert stat.S_IMODE(spool_file.stat().st_mode) == 0o600


def test_spool_file_in_a_setgid_spool_is_0640_in_its_group_even_with_umask_077(
    paths: Paths,
) -> None:
    """In a setgid spool (the package's: its group is the daemon's) the file is made 0640,
    so that group may read it, whatever umask the client inherited."""
    paths.spool.chmod(0o2700)
    client(paths, "d=sshd", umask=0o077)
    (spool_file,) = spooled(paths.spool)
    st = spool_file.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, paths.spool.stat().st_gid)


def test_spool_file_is_complete_and_visible_under_its_final_name(paths: Paths) -> None:
    """Only the renamed file is left: no dot name, named time.pid.wa1 after the client."""
    result = client(paths, "d=sshd")
    (spool_file,) = spooled(paths.spool)
    assert not spool_file.name.startswith(".")
    match = re.fullmatch(r"(\d+)\.(\d+)\.wa1", spool_file.name)
    assert match
    assert int(match[2]) == result.pid


def test_spool_file_holds_the_datagram_bytes(paths: Paths, listen: Listen) -> None:
    """The spool file holds exactly what the datagram would have been (only t differs)."""
    receiver = listen(paths.sock)
    client(paths, *ALL_ARGS)
    datagram = receive(receiver).data
    receiver.close()
    paths.sock.unlink()
    client(paths, *ALL_ARGS)
    (spool_file,) = spooled(paths.spool)
    assert without_time(spool_file.read_bytes()) == without_time(datagram)


def test_spooled_event_is_not_also_logged(paths: Paths, listen: Listen) -> None:
    """An event that went to the spool is not also written to syslog."""
    log = listen(paths.log)
    client(paths, "d=sshd")
    assert len(spooled(paths.spool)) == 1
    assert pending(log) == []


@pytest.mark.usefixtures("full_queue")
def test_full_queue_is_retried_for_about_100ms_then_spooled(paths: Paths) -> None:
    """A full daemon queue is retried for about 100 ms (client clock) before spooling."""
    client(paths, "d=sshd")
    (spool_file,) = spooled(paths.spool)
    started = int(spool_file.name.split(".")[0]) / 1e6  # the client's time.time() at start
    # File times come from the kernel's coarse clock: allow a tick or two either way.
    waited = spool_file.stat().st_mtime - started
    assert 0.07 <= waited <= 0.2


@pytest.mark.usefixtures("full_queue")
def test_wait_0_spools_a_full_queue_at_once(paths: Paths) -> None:
    """`wait=0` (the durable line's fallback: logger already waited) spools without retrying."""
    client(paths, "d=sshd", "wait=0")
    (spool_file,) = spooled(paths.spool)
    waited = spool_file.stat().st_mtime - int(spool_file.name.split(".")[0]) / 1e6
    assert waited < 0.03  # the default retries for about 100 ms (test above)


@pytest.mark.parametrize("setting", ["wait=500", "wait=-1", "wait=x", "wait="])
def test_wait_setting_never_lengthens_the_retry(setting: str) -> None:
    """A wait above 100 ms is capped, and a malformed one means the default."""
    assert notify.eagain_wait(notify.parse_args([setting])[1]) == notify.EAGAIN_WAIT


@pytest.mark.usefixtures("full_queue")
def test_full_queue_run_stays_within_budget(paths: Paths) -> None:
    """Even retrying a full queue the run ends well inside 250 ms.

    The wall bound is 0.5 s because it also counts interpreter start-up and
    scheduler noise, which the client's own 250 ms budget does not.
    """
    result = client(paths, "d=sshd")
    assert result.elapsed < WALL_BOUND
    assert len(spooled(paths.spool)) == 1


def test_full_queue_event_is_not_delivered_as_well(paths: Paths, full_queue: socket.socket) -> None:
    """When the queue stayed full the event is spooled only, not also queued late."""
    client(paths, "d=sshd")
    assert set(pending(full_queue)) == {b"filler"}


def test_socket_path_fifo_ends_quickly(paths: Paths) -> None:
    """A FIFO at the socket path neither blocks nor hangs the client; the event is spooled.

    The bound is 0.5 s wall (client budget 250 ms plus start-up and scheduler noise).
    """
    os.mkfifo(paths.sock)
    result = client(paths, "d=sshd")
    assert result.returncode == 0
    assert result.elapsed < WALL_BOUND
    assert len(spooled(paths.spool)) == 1


# --- spool unusable: syslog -------------------------------------------------------


def test_spool_symlink_is_not_followed(paths: Paths, tmp_path: Path, listen: Listen) -> None:
    """A spool dir that is a symlink is not followed: nothing is written where it points."""
    listen(paths.log)
    target = tmp_path / "elsewhere"
    target.mkdir()
    paths.spool.rmdir()
    paths.spool.symlink_to(target)
    client(paths, "d=sshd")
    assert list(target.iterdir()) == []


def test_spool_symlink_falls_back_to_syslog(paths: Paths, tmp_path: Path, listen: Listen) -> None:
    """When the spool dir is a symlink the event goes to syslog instead."""
    log = listen(paths.log)
    target = tmp_path / "elsewhere"
    target.mkdir()
    paths.spool.rmdir()
    paths.spool.symlink_to(target)
    client(paths, "d=sshd")
    assert b"d=sshd" in receive(log).data


def test_missing_spool_falls_back_to_syslog(paths: Paths, listen: Listen) -> None:
    """With no spool dir the event goes to syslog."""
    log = listen(paths.log)
    paths.spool.rmdir()
    client(paths, "d=sshd")
    assert b"d=sshd" in receive(log).data


FILLER = frozenset(f"{i}.1.wa1" for i in range(notify.SPOOL_CAP - 1))


@pytest.fixture(scope="module")
def nearly_full_spool_dir() -> Iterator[Path]:
    """A spool dir holding SPOOL_CAP - 1 files, made once, on tmpfs if there is one.

    10000 creates take seconds on a busy disk and milliseconds on tmpfs.
    """
    shm = Path("/dev/shm")
    spool = Path(tempfile.mkdtemp(prefix="wa-spool-", dir=shm if os.access(shm, os.W_OK) else None))
    for name in FILLER:
        os.close(os.open(spool / name, os.O_WRONLY | os.O_CREAT, 0o600))
    yield spool
    shutil.rmtree(spool)


@pytest.fixture
def nearly_full_spool(nearly_full_spool_dir: Path) -> Iterator[Path]:
    """The shared nearly full spool, put back to its SPOOL_CAP - 1 filler files afterwards."""
    yield nearly_full_spool_dir
    for path in nearly_full_spool_dir.iterdir():
        if path.name not in FILLER:
            path.unlink()


def test_full_spool_falls_back_to_syslog(
    paths: Paths, listen: Listen, nearly_full_spool: Path
) -> None:
    """With SPOOL_CAP files in the spool, no event is written there and syslog gets it; a
    one-byte fallback marker tells the daemon so."""
    log = listen(paths.log)
    (nearly_full_spool / "one-more").write_bytes(b"")
    client(Paths(paths.sock, nearly_full_spool, paths.log), "d=sshd")
    marker = nearly_full_spool / f"{os.geteuid()}.syslog"
    assert len(spooled(nearly_full_spool)) == notify.SPOOL_CAP + 1  # the marker
    assert marker.read_bytes() == b"!"
    assert b"d=sshd" in receive(log).data


def test_spool_one_below_cap_still_takes_the_event(
    paths: Paths, listen: Listen, nearly_full_spool: Path
) -> None:
    """With one file fewer than SPOOL_CAP the spool still takes the event."""
    log = listen(paths.log)
    client(Paths(paths.sock, nearly_full_spool, paths.log), "d=sshd")
    assert len(spooled(nearly_full_spool)) == notify.SPOOL_CAP
    assert pending(log) == []


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wa-notify-"))
    path.chmod(0o755)
    yield path
    for sub in path.iterdir():
        if sub.is_dir():
            sub.chmod(0o700)
    shutil.rmtree(path)


def test_read_only_spool_falls_back_to_syslog(shared_dir: Path, listen: Listen) -> None:
    """A spool dir the client cannot write to sends the event to syslog, leaving it empty.

    Root ignores directory modes, so as root the client runs as uid 65534 via setpriv.
    """
    spool = shared_dir / "spool"
    spool.mkdir(mode=0o500)
    paths = Paths(shared_dir / "notify.sock", spool, shared_dir / "log.sock")
    log = listen(paths.log)
    paths.log.chmod(0o666)  # sending to a socket file needs write permission on it
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        probe = subprocess.run([*prefix, REAL_PY, "-I", "-S", "-c", "pass"], check=False)
        if probe.returncode != 0:
            pytest.skip(f"{REAL_PY} cannot be run as uid {NOBODY}")
        os.chown(spool, NOBODY, NOBODY)
    run_client("d=sshd", *paths.settings(), prefix=prefix)
    got = receive(log)
    assert got.uid == (NOBODY if prefix else os.geteuid())  # it really ran as that user
    assert b"d=sshd" in got.data
    assert list(spool.iterdir()) == []


def test_spool_path_fifo_falls_back_to_syslog_quickly(paths: Paths, listen: Listen) -> None:
    """A FIFO at the spool path neither blocks nor hangs the client; syslog gets the event.

    The bound is 0.5 s wall (client budget 250 ms plus start-up and scheduler noise).
    """
    log = listen(paths.log)
    paths.spool.rmdir()
    os.mkfifo(paths.spool)
    result = client(paths, "d=sshd")
    assert result.elapsed < WALL_BOUND
    assert b"d=sshd" in receive(log).data


def test_every_path_a_fifo_still_ends_quickly(paths: Paths) -> None:
    """With FIFOs at the socket, spool and syslog paths the client still exits 0 in time.

    The bound is 0.5 s wall (client budget 250 ms plus start-up and scheduler noise).
    """
    paths.spool.rmdir()
    for path in (paths.sock, paths.spool, paths.log):
        os.mkfifo(path)
    result = client(paths, "d=sshd")
    assert result.returncode == 0
    assert result.elapsed < WALL_BOUND


# --- the syslog line --------------------------------------------------------------


@pytest.fixture
def syslog_only(paths: Paths, listen: Listen) -> socket.socket:
    """No daemon, no spool dir, a syslog socket: the client's last resort."""
    paths.spool.rmdir()
    return listen(paths.log)


def test_syslog_line_has_rfc3164_authpriv_warning_header(
    paths: Paths, syslog_only: socket.socket
) -> None:
    """The syslog line starts `<84>wrapalert-notify[PID]: ` (authpriv.warning, client pid)."""
    result = client(paths, *ALL_ARGS)
    prefix = b"<84>wrapalert-notify[%d]: " % result.pid
    assert receive(syslog_only).data.startswith(prefix)


def test_syslog_line_carries_every_field(paths: Paths, syslog_only: socket.socket) -> None:
    """The syslog line carries every field as key=value, plus t and H."""
    client(paths, *ALL_ARGS)
    words = receive(syslog_only).data.split(b": ", 1)[1].split()
    for key, value in ALL_FIELDS.items():
        assert f"{key}={value}".encode() in words
    assert b"H=" + HOST.encode() in words
    assert any(word.startswith(b"t=") for word in words)


def test_syslog_gets_one_single_line_datagram(paths: Paths, syslog_only: socket.socket) -> None:
    """The fallback is exactly one datagram holding one line, sent by the client itself."""
    result = client(paths, *ALL_ARGS)
    first = receive(syslog_only)
    assert b"\n" not in first.data.rstrip(b"\n")
    assert first.pid == result.pid
    assert pending(syslog_only) == []


def test_full_syslog_queue_does_not_hold_client(paths: Paths, syslog_only: socket.socket) -> None:
    """A syslog socket whose queue is full does not hold the client up (non-blocking send).

    The bound is 0.2 s, under the 250 ms timer that would end a blocked send,
    and about ten times a normal run.
    """
    with filled(paths.log):
        result = client(paths, "d=sshd")
    assert result.elapsed < 0.2
    assert set(pending(syslog_only)) == {b"filler"}


# --- the functions, in-process ---------------------------------------------------


def test_parse_args_splits_at_first_equals() -> None:
    """parse_args keeps every `=` after the first in the value."""
    assert notify.parse_args(["u=a=b", "c==x"])[0] == {"u": "a=b", "c": "=x"}


def test_parse_args_ignores_unknown_keys_and_bare_words() -> None:
    """parse_args drops unknown keys, wrong-case keys and words without `=`."""
    assert notify.parse_args(["daemon=x", "D=x", "x", "--d=x", "=x", "d"]) == ({}, {})


def test_parse_args_separates_settings_from_fields() -> None:
    """parse_args returns socket/spool/syslog as settings, not as wire fields."""
    got = notify.parse_args(["d=sshd", "socket=/s", "spool=/q", "syslog=/l"])
    assert got == ({"d": "sshd"}, {"socket": "/s", "spool": "/q", "syslog": "/l"})


def test_parse_args_caps_setting_paths_at_max_path() -> None:
    """Setting values are capped at MAX_PATH bytes, not at MAX_VALUE."""
    _fields, settings = notify.parse_args(["spool=/" + "x" * 2000])
    assert len(settings["spool"]) == notify.MAX_PATH


def test_clean_keeps_only_libwraps_safe_bytes() -> None:
    """clean keeps libwrap's 73 safe bytes and turns every other byte into `_`."""
    assert notify.clean("a\x00b\nc\x7fd\x80e f é%-/=@:,+!") == "a_b_c_d__e_f___%-/=@:,+!"


@pytest.mark.parametrize(
    "value",
    ["x" * 300, "é" * 300, "€" * 300, "\U0001f600" * 300, "\udcff" * 300, "x\udcff" * 300],
    ids=["ascii", "two-byte", "three-byte", "four-byte", "invalid", "mixed"],
)
def test_clean_result_never_exceeds_limit_in_utf8(value: str) -> None:
    """clean's result encodes to at most `limit` bytes of valid UTF-8, whatever the input."""
    assert len(notify.clean(value).encode("utf-8")) <= notify.MAX_VALUE


def test_clean_cuts_at_exactly_the_limit() -> None:
    """clean cuts at the byte limit: each byte of a multi-byte character is one `_`."""
    assert notify.clean("é" * 200) == "_" * notify.MAX_VALUE


def test_clean_turns_undecodable_bytes_into_underscores() -> None:
    """clean maps surrogate-escaped argv bytes (never UTF-8) to `_`."""
    assert notify.clean("a\udcffb") == "a_b"


def test_encode_layout() -> None:
    """encode writes the tag, the fields in order, then t with 6 decimals and H, each on a line."""
    got = notify.encode({"d": "sshd", "a": "192.0.2.7"}, 1700000000.25, "box")
    assert got == b"WA1\nd=sshd\na=192.0.2.7\nt=1700000000.250000\nH=box\n"


def test_encode_cleans_host_name() -> None:
    """encode cleans the host name like any other value."""
    assert notify.encode({}, 0.0, "bad\nhost").endswith(b"\nH=bad_host\n")


# --- hardening: hostile values, failed writes, the 250 ms budget under every fallback ----


def test_dotdot_values_do_not_move_the_spool_file(paths: Paths, tmp_path: Path) -> None:
    """Values containing `../` never steer where the spool file lands: it is in the spool dir."""
    client(paths, "d=../../escape", "u=../x", "n=../../../tmp/y", "c=..")
    (spool_file,) = spooled(paths.spool)
    assert fields(spool_file.read_bytes())["d"] == "../../escape"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


def test_failed_spool_write_leaves_no_file_behind(paths: Paths, listen: Listen) -> None:
    """A spool write that fails (as on a full disk) leaves no event file, not even a dot
    file: only the (here empty: the disk took nothing) fallback marker.

    `prlimit --fsize=0` makes write() fail with EFBIG on the first byte, the
    way ENOSPC does on a full file system (Python ignores SIGXFSZ). A dot file
    left behind would never be ingested and would count towards SPOOL_CAP.
    """
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is missing")
    listen(paths.log)
    run_client("d=sshd", *paths.settings(), prefix=[prlimit, "--fsize=0", "--"])
    (marker,) = paths.spool.iterdir()
    assert (marker.name, marker.stat().st_size) == (f"{os.geteuid()}.syslog", 0)


@pytest.mark.usefixtures("full_queue")
@pytest.mark.parametrize("how", ["missing", "symlink"])
def test_full_queue_and_missing_or_symlinked_spool_stay_within_budget(
    how: str, paths: Paths, tmp_path: Path, listen: Listen
) -> None:
    """Queue full and the spool missing or a symlink: the client still ends in time.

    This is the slowest route (about 100 ms of retries, a failed spool, then
    syslog). The bound is 0.5 s wall: the client's 250 ms budget plus
    interpreter start-up and scheduler noise on a loaded CI machine.
    """
    listen(paths.log)
    paths.spool.rmdir()
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir()
        paths.spool.symlink_to(tmp_path / "elsewhere")
    result = client(paths, "d=sshd")
    assert (result.returncode, result.elapsed < WALL_BOUND) == (0, True)


@pytest.mark.usefixtures("full_queue")
def test_full_queue_and_full_spool_stay_within_budget(
    paths: Paths, listen: Listen, nearly_full_spool: Path
) -> None:
    """Queue full and SPOOL_CAP files in the spool: the client still ends in time.

    Counting the full spool is part of the run. The bound is 0.5 s wall: the
    client's 250 ms budget plus start-up and scheduler noise on a loaded CI machine.
    """
    listen(paths.log)
    (nearly_full_spool / "one-more").write_bytes(b"")
    result = client(Paths(paths.sock, nearly_full_spool, paths.log), "d=sshd")
    assert (result.returncode, result.elapsed < WALL_BOUND) == (0, True)


def test_full_queue_and_read_only_spool_stay_within_budget(
    shared_dir: Path, listen: Listen
) -> None:
    """Queue full and a spool the client may not write: the client still ends in time.

    Root ignores directory modes, so as root the client runs as uid 65534 via
    setpriv. The bound is 0.5 s wall: the client's 250 ms budget plus start-up
    and scheduler noise on a loaded CI machine.
    """
    spool = shared_dir / "spool"
    spool.mkdir(mode=0o500)
    paths = Paths(shared_dir / "notify.sock", spool, shared_dir / "log.sock")
    for path in (paths.sock, paths.log):
        listen(path)
        path.chmod(0o666)  # the other uid must be able to send to both
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        os.chown(spool, NOBODY, NOBODY)
    with filled(paths.sock):
        result = run_client("d=sshd", *paths.settings(), prefix=prefix)
    assert (result.returncode, result.elapsed < WALL_BOUND) == (0, True)
    assert list(spool.iterdir()) == []  # it really could not write there


def test_running_out_of_time_still_leaves_a_syslog_line() -> None:
    """If the 250 ms budget runs out mid-delivery (here: the client is stopped while its
    queue is full), the event goes to syslog instead of being lost."""
    short = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    try:
        full = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        full.bind(str(short / "n.sock"))
        with filled(short / "n.sock"):
            pass  # the queue is full: the client will retry for about 100 ms
        log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        log.bind(str(short / "log.sock"))
        log.settimeout(5)
        (short / "spool").mkdir()
        proc = subprocess.Popen(
            [
                REAL_PY,
                "-I",
                "-S",
                str(NOTIFY_PATH),
                "d=sshd",
                "a=192.0.2.1",
                f"socket={short}/n.sock",
                f"spool={short}/spool",
                f"syslog={short}/log.sock",
            ],
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.04)  # inside the retry loop (it lasts ~100 ms)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.4)  # the real-time budget runs out while it is stopped
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=5) == 0
        line = log.recv(8192)
        assert b"wrapalert-notify[" in line
        assert b"d=sshd" in line
        full.close()
        log.close()
    finally:
        shutil.rmtree(short, ignore_errors=True)
