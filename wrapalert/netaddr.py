"""Network prefixes of client addresses: the one place their arithmetic lives.

Used by the aggregator's roll-up (/24 or /64, then /16 or /48) and the scan
rule (sweeps of one /24 or /64), so below both the pipeline and the digest
view. Addresses are the wire's canonical text.
"""

from __future__ import annotations

import ipaddress
import socket

_PREFIXES = {4: (24, 16), 6: (64, 48)}  # roll-up prefix per IP version, for levels 1 and 2
# Recent networks' text by prefix bytes (their lengths differ by level and family, so
# one table serves both): a flood's sources share few /16s and /48s.
_NET_TEXT: dict[bytes, str] = {}
_NET_TEXT_MAX = 4096


def packed(addr: str) -> bytes | None:
    """An address's bytes (4 or 16), None if it is not an IP address."""
    try:
        if ":" in addr:
            return socket.inet_pton(socket.AF_INET6, addr.partition("%")[0])
        return socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        return None


def network(address: bytes, level: int) -> str:
    """The /24 or /64 (level 1), /16 or /48 (level 2) holding the address (its bytes,
    from `packed`), as text."""
    v6 = len(address) == 16
    prefix = _PREFIXES[6 if v6 else 4][level - 1]
    keep = prefix // 8  # every roll-up prefix is whole bytes
    head = address[:keep]
    text = _NET_TEXT.get(head)
    if text is None:
        masked = head + bytes(len(address) - keep)
        text = f"{socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, masked)}/{prefix}"
        if len(_NET_TEXT) >= _NET_TEXT_MAX:
            _NET_TEXT.clear()
        _NET_TEXT[head] = text
    return text


MAX_QUERY = 100  # characters: the longest address or network an operator may name
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def query_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """What an operator asks about (`wrapalert explain ADDRESS`): an address or a network
    in CIDR form (host bits dropped, a zone ignored; `::ffff:a.b.c.d` is the IPv4 address,
    as the daemon reports it). ValueError saying what to write, for anything else."""
    if len(text) > MAX_QUERY or not text.isprintable():
        raise ValueError("name an address or a network, e.g. 203.0.113.7 or 2001:db8::/64")
    address, slash, prefix = text.strip().partition("/")
    address = address.partition("%")[0]  # a zone names an interface, not a source
    try:
        net = ipaddress.ip_network(f"{address}{slash}{prefix}", strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an address or a network (write 203.0.113.7, 203.0.113.0/24, "
            "2001:db8::1 or 2001:db8::/64)"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        low = int(net.network_address) & 0xFFFF_FFFF
        return ipaddress.IPv4Network((low, net.prefixlen - 96))
    return net
