"""Network prefixes of client addresses: the one place their arithmetic lives.

Used by the aggregator's roll-up (/24 or /64, then /16 or /48) and the scan
rule (sweeps of one /24 or /64), so below both the pipeline and the digest
view. Addresses are the wire's canonical text.
"""

from __future__ import annotations

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
