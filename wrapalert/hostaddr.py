"""This host's own addresses, as the kernel has them now (never banned: shield.py).

Read at each ban decision, not once at start: an address the host gains
while the daemon runs (DHCP, SLAAC, a VPN coming up) is protected from its
first moment. Decisions are rare (one per source that reaches the
threshold), and a read is cheap: bench/results/host_reads.md.

Two sources, both of the daemon's own network namespace (the addresses it is
reached at):
- rtnetlink: one RTM_GETADDR dump on an AF_NETLINK socket (the unit allows
  that family, for the evidence lookups; `nft` needs it anyway). IFA_LOCAL is the
  host's own address (on a point-to-point link IFA_ADDRESS is the peer's),
  IFA_ADDRESS where there is no IFA_LOCAL (IPv6).
- /proc/self/net (`fib_trie`'s local host routes, `if_inet6`), when netlink
  is refused (a unit without AF_NETLINK, e.g. in dry-run). Not /proc/net:
  under the packaged unit's ProcSubset=pid that path does not exist, while
  /proc/self/net does.

`parse_dump` and `parse_proc` are pure (tests feed them real kernel bytes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from pathlib import Path

NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTATTR = struct.Struct("=HH")  # len, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
TIMEOUT = 1.0  # seconds: the kernel answers a dump at once; never hang a decision on it
PROC = Path("/proc/self/net")


def _align(n: int) -> int:
    return (n + 3) & ~3


def request(seq: int = 1) -> bytes:
    """An RTM_GETADDR dump request for every family."""
    body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return (
        NLMSG.pack(NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
    )


def parse_dump(data: bytes) -> tuple[list[str], bool]:
    """The addresses in one datagram of the dump's answer, and whether it was the last
    (NLMSG_DONE). OSError for an NLMSG_ERROR the kernel sent instead."""
    found: list[str] = []
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size or offset + length > len(data):
            break  # truncated: what came before stands
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + NLMSG.size)
            if errno:
                raise OSError(-errno, "rtnetlink refused the address dump")
        elif kind == RTM_NEWADDR and length >= NLMSG.size + IFADDRMSG.size:
            addr = _address(data[offset + NLMSG.size : offset + length])
            if addr is not None:
                found.append(addr)
        offset += _align(length)
    return found, False


def _address(msg: bytes) -> str | None:
    family = msg[0]
    if family not in {socket.AF_INET, socket.AF_INET6}:
        return None
    size = 4 if family == socket.AF_INET else 16
    attrs: dict[int, bytes] = {}
    offset = IFADDRMSG.size
    while offset + RTATTR.size <= len(msg):
        length, kind = RTATTR.unpack_from(msg, offset)
        if length < RTATTR.size or offset + length > len(msg):
            break
        attrs[kind] = msg[offset + RTATTR.size : offset + length]
        offset += _align(length)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != size:
        return None
    return str(ipaddress.ip_address(raw))


def netlink_addresses() -> list[str]:
    """This namespace's addresses through rtnetlink; OSError when it cannot be asked."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((0, 0))
        sock.send(request())
        found: list[str] = []
        while True:
            addrs, done = parse_dump(sock.recv(65536))
            found += addrs
            if done:
                return found


def parse_proc(fib_trie: str, if_inet6: str) -> list[str]:
    """The local networks /proc's text names: each `fib_trie` entry followed by a
    "/N host LOCAL" line (an address as /32; a whole local route, as `ip route add local`
    makes, as its network), and each IPv6 address of `if_inet6`."""
    found: list[str] = []
    key = ""  # the trie entry the following route lines belong to
    for line in fib_trie.splitlines():
        words = line.split()
        if words[:1] == ["|--"] and len(words) == 2:
            key = words[1]
        elif key and words[1:3] == ["host", "LOCAL"] and words[0].startswith("/"):
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.IPv4Network(f"{key}{words[0]}", strict=False)))
    for line in if_inet6.splitlines():
        try:
            found.append(str(ipaddress.IPv6Address(int(line.split()[0], 16))))
        except (ValueError, IndexError):
            continue
    return found


def proc_addresses(proc: Path = PROC) -> list[str]:
    """This namespace's addresses from /proc's text (empty where it says nothing)."""
    texts = []
    for name in ("fib_trie", "if_inet6"):
        try:
            texts.append((proc / name).read_text())
        except OSError:
            texts.append("")
    return parse_proc(*texts)


def own_addresses() -> tuple[str, ...]:
    """This host's addresses (and local networks) now: rtnetlink, else /proc/self/net."""
    try:
        found = netlink_addresses()
    except OSError:
        found = proc_addresses()
    return tuple(dict.fromkeys(found))
