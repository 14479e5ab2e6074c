"""Evidence: the sock_diag lookup's bytes, and the witness against the real kernel's tables.

The parser is tested over bytes the kernel sent (captured on Linux 6.x, amd64: an
IPv4 connection on a dual-stack listener, an IPv6 one, the listener a lookup falls back
to, and "no such socket"); the witness over real sockets of this process's own network
namespace, which an unprivileged process may look up too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import PYTHON, require

from wrapalert import sockdiag
from wrapalert.cli import format_status, status_exit
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.witness import LATE, Witness
from wrapalert.model import Event
from wrapalert.sockdiag import Ends, Found, SockDiagError

# Answers to lookups with seq 7 (sockdiag.request(..., seq=7)).
ESTABLISHED_V4_ON_DUAL_STACK = bytes.fromhex(
    "7c0000001400000007000000031500000a01000008ae9dd400000000000000000000ffff7f000001"
    "00000000000000000000ffff7f000002000000005d1000000000000000000000000000000000000000"
    "00000000000000050008000000000008000f00000000000c00150001000000000000000600160012000000"
)
LISTENER = bytes.fromhex(
    "840000001400000007000000031500000a0a000008ae000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000005e100000000000000000000001000000800000000000"
    "000050c50100050008000000000005000b000000000008000f00000000000c001500010000000000000006"
    "00160012000000"
)
NO_SUCH_SOCKET = bytes.fromhex(
    "5c000000020000000700000003150000feffffff4800000014000100070000000000000002060000ffffffff"
    "08af9dd57f0000010000000000000000000000007f0000020000000000000000000000000000000000"
    "00ffffffffffffffff"
)
ESTABLISHED_V6 = bytes.fromhex(
    "7c0000001400000007000000031500000a01000008ae9dd6000000000000000000000000000000010000"
    "0000000000000000000000000001000000005f10000000000000000000000000000000000000000000000000"
    "0000050008000000000008000f00000000000c00150001000000000000000600160012000000"
)
# The requests, as the kernel took them: TCP names the local end first, UDP the remote.
TCP_REQUEST = bytes.fromhex(
    "4800000014000100070000000000000002060000ffffffff08ae9dd47f000001000000000000000000000000"
    "7f00000200000000000000000000000000000000ffffffffffffffff"
)
UDP_REQUEST = bytes.fromhex(
    "4800000014000100070000000000000002110000ffffffff115c0045cb007142000000000000000000000000"
    "c000020100000000000000000000000000000000ffffffffffffffff"
)


def test_a_connection_on_a_dual_stack_listener_reads_as_ipv4() -> None:
    """The kernel's answer for an IPv4 peer of an AF_INET6 socket: its state, both ends
    with the mapped addresses as IPv4, and the socket's cookie."""
    assert sockdiag.parse(ESTABLISHED_V4_ON_DUAL_STACK, seq=7) == [
        Found(socket.AF_INET6, sockdiag.ESTABLISHED, "127.0.0.1", 2222, "127.0.0.2", 40404, 4189)
    ]


def test_an_ipv6_connection_and_the_listener_fallback_parse() -> None:
    """An IPv6 connection parses with its addresses; the listener the lookup falls back to
    when no connection matches is a LISTEN socket with no peer (never evidence)."""
    (six,) = sockdiag.parse(ESTABLISHED_V6)
    assert (six.remote, six.remote_port, six.state) == ("::1", 40406, sockdiag.ESTABLISHED)
    (listener,) = sockdiag.parse(LISTENER)
    assert (listener.state, listener.remote, listener.remote_port) == (sockdiag.LISTEN, "::", 0)
    assert listener.state not in sockdiag.HANDSHAKE_DONE


def test_no_such_socket_and_other_errors_are_told_apart() -> None:
    """ENOENT is FileNotFoundError (nothing there); another errno, or bytes cut short, is
    a SockDiagError (the kernel cannot answer)."""
    with pytest.raises(FileNotFoundError):
        sockdiag.parse(NO_SUCH_SOCKET)
    einval = NO_SUCH_SOCKET[:16] + (-22).to_bytes(4, "little", signed=True) + NO_SUCH_SOCKET[20:]
    with pytest.raises(SockDiagError):
        sockdiag.parse(einval)
    for cut in (ESTABLISHED_V4_ON_DUAL_STACK[:40], NO_SUCH_SOCKET[:18]):
        with pytest.raises(SockDiagError):
            sockdiag.parse(cut)


def test_an_answer_to_another_request_is_skipped() -> None:
    """With a sequence number, an older answer left unread does not pass for this one."""
    assert sockdiag.parse(ESTABLISHED_V4_ON_DUAL_STACK, seq=8) == []
    assert sockdiag.parse(ESTABLISHED_V4_ON_DUAL_STACK + ESTABLISHED_V6, seq=7)[1].remote == "::1"


def test_requests_are_the_bytes_the_kernel_took() -> None:
    """A TCP lookup names the local end first (a mapped server address as IPv4); a UDP
    lookup the remote end, as udp_diag expects."""
    tcp = Ends("::ffff:127.0.0.1", 2222, "127.0.0.2", 40404)
    assert sockdiag.request(socket.IPPROTO_TCP, tcp, seq=7) == TCP_REQUEST
    udp = Ends("192.0.2.1", 69, "203.0.113.66", 4444)
    assert sockdiag.request(socket.IPPROTO_UDP, udp, seq=7) == UDP_REQUEST
    with pytest.raises(ValueError, match="families"):
        sockdiag.request(socket.IPPROTO_TCP, Ends("::1", 22, "192.0.2.1", 4444))
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        sockdiag.request(socket.IPPROTO_TCP, Ends("unknown", 22, "192.0.2.1", 4444))


# -- the witness, against this namespace's real sockets -----------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A dual-stack TCP listener on a free port, like sshd's."""
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::", 0))
    sock.listen(16)
    yield sock
    sock.close()


def connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family)
    sock.bind((source, 0))
    sock.connect(("::1" if ":" in source else "127.0.0.1", port))
    return sock


def report(server: str, server_port: int, client: str, client_port: int) -> Event:
    """A trusted report naming this connection, as the hook line's %A %R %a %r make it."""
    fields = {
        "daemon": "sshd",
        "client_addr": client,
        "client_port": str(client_port),
        "server_addr": server,
        "server_port": str(server_port),
    }
    return Event(fields, time.time(), uid=0, trusted=True)


def checked(witness: Witness, event: Event) -> str:
    witness.check(event)
    return event.transport


def test_a_held_connection_is_tcp_once(listener: socket.socket) -> None:
    """A report naming a connection the kernel holds past its handshake is "tcp"; a second
    report naming the same socket is not (one handshake vouches for one report)."""
    port = listener.getsockname()[1]
    with connect(port) as client:
        stats = Stats()
        witness = Witness(stats, time.time)
        event = report("::ffff:127.0.0.1", port, "127.0.0.2", client.getsockname()[1])
        assert checked(witness, event) == "tcp"
        again = report("127.0.0.1", port, "127.0.0.2", client.getsockname()[1])
        assert checked(witness, again) == "unknown"
    assert stats.evidence == {"tcp": 1, "reused": 1}


def test_a_closed_and_a_half_closed_connection(listener: socket.socket) -> None:
    """The peer's close leaves the server's socket in CLOSE_WAIT (the refused child still
    holds it): still evidence. A report naming another client port is not: the kernel
    then offers the listener, which proves nothing."""
    port = listener.getsockname()[1]
    client = connect(port)
    client_port = client.getsockname()[1]
    accepted, _ = listener.accept()
    client.close()
    time.sleep(0.05)
    witness = Witness(Stats(), time.time)
    assert checked(witness, report("127.0.0.1", port, "127.0.0.2", client_port)) == "tcp"
    assert checked(witness, report("127.0.0.1", port, "127.0.0.2", client_port + 1)) == "unknown"
    accepted.close()
    assert witness.stats.evidence["gone"] == 1


def test_an_ipv6_connection_is_tcp(listener: socket.socket) -> None:
    """An IPv6 peer's connection is found by its IPv6 ends."""
    port = listener.getsockname()[1]
    with connect(port, "::1") as client:
        witness = Witness(Stats(), time.time)
        assert checked(witness, report("::1", port, "::1", client.getsockname()[1])) == "tcp"


def test_a_udp_service_makes_udp() -> None:
    """No TCP connection, but a UDP socket bound on the server's port (a datagram service:
    its client address is the datagram's word): "udp", never "tcp"."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as service:
        service.bind(("::", 0))
        port = service.getsockname()[1]
        witness = Witness(Stats(), time.time)
        assert checked(witness, report("127.0.0.1", port, "203.0.113.66", 4444)) == "udp"
        assert checked(witness, report("::1", port, "2001:db8::66", 4444)) == "udp"
    assert witness.stats.evidence == {"udp": 2}


@pytest.mark.parametrize(
    ("why", "change"),
    [
        ("no_ports", {"server_port": "0"}),  # hosts_ctl's %R
        ("no_ports", {"client_port": ""}),
        ("no_ports", {"server_addr": "unknown"}),
        ("no_ports", {"server_addr": "::1"}),  # a family other than the client's
        ("late", {"time": time.time() - LATE - 5}),
        ("late", {"origin": "spool"}),  # spooled and no time of its own
        ("unchecked", {"trusted": False}),
    ],
)
def test_reports_the_kernel_is_not_asked_about_are_unknown(
    listener: socket.socket, why: str, change: dict[str, object]
) -> None:
    """Without a connection's ends, too old by its own clock, or from an untrusted sender,
    a report is "unknown" even though its connection is there, and counted by why."""
    port = listener.getsockname()[1]
    with connect(port) as client:
        event = report("127.0.0.1", port, "127.0.0.2", client.getsockname()[1])
        for key, value in change.items():
            if key in ("trusted", "origin"):
                setattr(event, key, value)
            elif value == "":
                del event.fields[key]
            else:
                event.fields[key] = str(value)
        witness = Witness(Stats(), time.time)
        assert checked(witness, event) == "unknown"
        assert witness.stats.evidence == {why: 1}


def test_lookups_are_bounded_per_batch(listener: socket.socket) -> None:
    """Past the batch's budget, reports are "skipped"; the next batch has a new budget."""
    port = listener.getsockname()[1]
    with connect(port) as client:
        witness = Witness(Stats(), time.time)
        witness.budget = 0
        event = report("127.0.0.1", port, "127.0.0.2", client.getsockname()[1])
        assert checked(witness, event) == "unknown"
        witness.new_batch()
        assert checked(witness, event) == "tcp"
    assert witness.stats.evidence == {"skipped": 1, "tcp": 1}


def test_a_kernel_that_cannot_answer_makes_unknown_and_says_why() -> None:
    """When no NETLINK_SOCK_DIAG socket can be had (a unit without AF_NETLINK), reports
    are "failed" and status names the error."""

    def refused() -> sockdiag.SockDiag:
        raise OSError(97, "Address family not supported by protocol")

    witness = Witness(Stats(), time.time, diag=refused)
    assert checked(witness, report("127.0.0.1", 22, "127.0.0.2", 4444)) == "unknown"
    status = witness.status()
    assert status["failed"] == 1
    assert "Address family not supported" in str(status["error"])


IN_USERNS = """
import sys, time
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.witness import Witness
from wrapalert.model import Event
fields = dict(zip(("server_addr", "server_port", "client_addr", "client_port"), sys.argv[1:]))
event = Event({"daemon": "sshd", **fields}, time.time(), uid=0, trusted=True)
Witness(Stats(), time.time).check(event)
print(event.transport)
"""


@pytest.mark.system
def test_the_lookup_needs_no_privilege_in_a_user_namespace(listener: socket.socket) -> None:
    """In a user namespace of its own (the unit's PrivateUsers=yes), with no capability
    over the host's network, the daemon still finds the connection: "tcp"."""
    require(shutil.which("unshare") is not None, "unshare is missing (util-linux)")
    probe = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, check=False)
    require(probe.returncode == 0, "user namespaces are not permitted here")
    port = listener.getsockname()[1]
    with connect(port) as client:
        done = subprocess.run(
            ["unshare", "-U", "-r", PYTHON, "-c", IN_USERNS, "127.0.0.1", str(port),
             "127.0.0.2", str(client.getsockname()[1])],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "tcp"), done.stderr


def base_status(**extra: object) -> dict[str, object]:
    """A status object as the daemon makes it, with `extra` keys."""
    return {
        "received": 9,
        "rejected": {},
        "untrusted": 0,
        "spooled": 0,
        "groups": 1,
        "pending_events": 0,
        "outbox": 0,
        "digests": 1,
        "sinks": {},
        "state": {"ok": True, "path": "/var/lib/wrapalert/state.db"},
        **extra,
    }


def test_status_says_what_was_verified_and_fails_when_banning_is_blind() -> None:
    """`wrapalert status` counts verified, udp and unknown sources (with why) and the
    duplicates dropped; with an enforcing nftables sink and a kernel that does not answer
    it names the error and exits 1 (banning is off in fact), else 0."""
    evidence = {"error": None, "tcp": 5, "udp": 2, "no_ports": 1, "late": 1}
    bans = {"mode": "enforce", "active": 0, "added": 0, "would_ban": 0, "expired": 0,
            "lifted": 0, "refused": {}}  # fmt: skip
    fine = base_status(evidence=evidence, duplicates=3, bans=bans)
    text = format_status(fine)
    assert "verified (tcp)           5   (udp 2, unknown 2: late 1, no_ports 1)" in text
    assert "duplicates               3" in text
    assert status_exit(fine) == 0
    blind = base_status(evidence={**evidence, "error": "sock_diag: errno 22"}, bans=bans)
    assert "EVIDENCE UNAVAILABLE: sock_diag: errno 22: no refusal can ban" in format_status(blind)
    assert status_exit(blind) == 1
    assert status_exit(base_status(evidence=blind["evidence"])) == 0  # no banning to lose
