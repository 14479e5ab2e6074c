"""The kernel's word on one connection: an exact NETLINK_SOCK_DIAG lookup.

A refused TCP connection is held by the wrapped service while its hook runs
(libwrap's clean_exit() sleeps 5 s before the child exits), and closed ones
stay in the table a while longer (CLOSE_WAIT, LAST_ACK, TIME_WAIT). So when
the daemon reads a report naming client address and port and server address
and port, it asks the kernel for that very socket: one request, answered by
a hash lookup in the kernel (`inet_diag_find_one_icsk`), whatever the number
of sockets (bench/evidence_lookup.py: about 16 us from Python, where a dump
filtered by port walks the whole established hash, about 2 ms here, and
/proc/net/tcp is read and parsed whole).

The lookup falls back to a listening socket when no connection matches (the
kernel's `inet_lookup`), and finds request sockets (SYN_RECV, what a spoofed
SYN makes) and TIME_WAIT ones: only the states past a completed handshake
count as evidence (`HANDSHAKE_DONE`).

Pure but for `SockDiag`, which owns one netlink socket: `request` builds the
bytes of a lookup, `parse` reads the kernel's answer. Stdlib only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NOCOOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE: match any socket
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
_PORTS = struct.Struct("!HH")  # inet_diag_sockid: sport, dport (network order)
_TAIL = struct.Struct("=I8s")  # inet_diag_sockid: if, cookie
_MSG = struct.Struct("=BBBB")  # inet_diag_msg head: family, state, timer, retrans
_ERRNO = struct.Struct("=i")
_MSG_SIZE = 72  # sizeof(struct inet_diag_msg)
_COOKIE = struct.Struct("=Q")
ENOENT = 2

# include/net/tcp_states.h
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT = 1, 2, 3, 4, 5, 6
CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV = 7, 8, 9, 10, 11, 12
# The states a socket reaches only after the peer answered our SYN-ACK: the peer's
# address is proven. SYN_RECV and NEW_SYN_RECV are not (a forged SYN makes them).
HANDSHAKE_DONE = frozenset(
    {ESTABLISHED, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING}
)
ALL_STATES = 0xFFFFFFFF


class SockDiagError(OSError):
    """The kernel refused the request (other than "no such socket")."""


@dataclass(frozen=True, slots=True)
class Ends:
    """The connection asked about, as the server sees it."""

    local: str
    local_port: int
    remote: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class Found:
    """One socket the kernel described."""

    family: int
    state: int
    local: str
    local_port: int
    remote: str
    remote_port: int
    cookie: int  # the kernel's id of this socket: a new connection has a new one


def _packed(addr: str) -> tuple[int, bytes]:
    """(family, 16 bytes) for an address; IPv4-mapped IPv6 is IPv4 (the kernel looks the
    IPv4 tuple up, which also finds a dual-stack socket's connection)."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return socket.AF_INET, ip.packed + bytes(12)
    return socket.AF_INET6, ip.packed


def request(protocol: int, ends: Ends, *, seq: int = 1) -> bytes:
    """The bytes of one exact lookup. ValueError: not two addresses of one family.

    TCP's request names the local end as source; UDP's the remote end (the kernel
    swaps them "for historical reasons", net/ipv4/udp_diag.c), so that a UDP lookup
    finds the socket bound on the local port whichever peer sent to it."""
    family, here = _packed(ends.local)
    other_family, there = _packed(ends.remote)
    if family != other_family:
        raise ValueError("the two ends are of different address families")
    ports = (ends.local_port, ends.remote_port)
    if protocol == socket.IPPROTO_UDP:
        here, there, ports = there, here, ports[::-1]
    sockid = _PORTS.pack(*ports) + here + there + _TAIL.pack(0, NOCOOKIE)
    body = _REQUEST.pack(family, protocol, 0, 0, ALL_STATES) + sockid
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    ip = ipaddress.IPv6Address(raw[:16])
    return str(ip.ipv4_mapped or ip)


def parse(data: bytes, seq: int | None = None) -> list[Found]:
    """The sockets in one datagram of the kernel's answer (with `seq`, only the answer to
    that request: an older one left unread is skipped). An error message raises:
    FileNotFoundError for ENOENT (no such socket), SockDiagError for anything else.
    Bytes that are not what the kernel sends raise SockDiagError too."""
    found: list[Found] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, their_seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise SockDiagError("a truncated netlink message")
        if kind == NLMSG_DONE:
            break
        if seq is None or their_seq == seq:
            message = data[offset + _HEADER.size : offset + length]
            if kind == NLMSG_ERROR:
                _raise_error(message)
            elif kind == SOCK_DIAG_BY_FAMILY:
                found.append(_socket(message))
        offset += (length + 3) & ~3
    return found


def _raise_error(message: bytes) -> None:
    """An NLMSG_ERROR's errno as an exception; an acknowledgement (0) is no error."""
    if len(message) < _ERRNO.size:
        raise SockDiagError("a truncated netlink error")
    (errno,) = _ERRNO.unpack_from(message)
    if errno == -ENOENT:
        raise FileNotFoundError(ENOENT, "no such socket")
    if errno:
        raise SockDiagError(-errno, f"sock_diag: errno {-errno}")


def _socket(message: bytes) -> Found:
    """One struct inet_diag_msg."""
    if len(message) < _MSG_SIZE:
        raise SockDiagError("a truncated inet_diag_msg")
    family, state, _timer, _retrans = _MSG.unpack_from(message)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise SockDiagError(f"an inet_diag_msg of family {family}")
    sport, dport = _PORTS.unpack_from(message, 4)
    local, remote = _address(family, message[8:24]), _address(family, message[24:40])
    (cookie,) = _COOKIE.unpack_from(message, 44)
    return Found(family, state, local, sport, remote, dport, cookie)


class SockDiag:
    """One NETLINK_SOCK_DIAG socket, for exact lookups in this network namespace.

    Non-blocking: the kernel answers a lookup while it handles the send, so the answer
    is queued when `send` returns; none there is an error, never a wait."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )  # fmt: skip
        self.seq = 0

    def lookup(self, protocol: int, ends: Ends) -> Found | None:
        """The socket the kernel finds for these ends (perhaps a listener, see the module
        docstring), or None. SockDiagError (an OSError) when the kernel cannot answer;
        ValueError when the ends are not two addresses of one family."""
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        self.sock.send(request(protocol, ends, seq=seq))
        for _ in range(4):  # answers to earlier requests left unread are skipped
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            try:
                found = parse(data, seq)
            except FileNotFoundError:
                return None
            if found:
                return found[0]
        raise SockDiagError("sock_diag: no answer")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
