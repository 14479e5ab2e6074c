"""Who is logged in from where: the remote peers of current sessions (never banned).

Read at each ban decision, like hostaddr.py, from two places:
- systemd-logind's session files, /run/systemd/sessions/<id> (mode 0644,
  key=value lines): REMOTE_HOST is the peer the PAM service named (sshd
  gives the client's address; a host name only with `UseDNS yes`, which
  cannot be matched without a DNS lookup and is skipped). Read directly
  rather than over D-Bus (`loginctl`): no bus, no child process, and the
  hardened unit can read them. logind calls the format private, but it has
  been these key=value lines since systemd's first releases (seen as written
  by systemd 257 on Debian 13; tests/test_sessions.py carries such a file).
- utmp (/var/run/utmp), where the host keeps one: USER_PROCESS records,
  each with ut_addr_v6 (what `who --ips` prints) or else ut_host. Debian 12
  writes it; Debian 13 has no utmp any more (logind is its only record).

Both are what a user with a session has, so reading them costs no trust:
the worst a local user can do is keep an address they log in from out of
reach of a ban, which they could do anyway by being that address.

The parsers are pure; the readers take their paths.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

SESSIONS = Path("/run/systemd/sessions")
UTMP = Path("/var/run/utmp")
# glibc's struct utmp on Linux (64- and 32-bit alike: 384 bytes): type, pid, line, id,
# user, host, exit status, session, time (two int32), addr_v6, unused.
UTMP_RECORD = struct.Struct("=h2xi32s4s32s256s2hi2i16s20s")
USER_PROCESS = 7
MAX_SESSIONS = 4096  # files read at most per decision (each a few hundred bytes)
MAX_UTMP = UTMP_RECORD.size * 4096
MAX_SESSION_FILE = 16384


@dataclass(frozen=True)
class Peer:
    """A logged-in session's remote address, and whose session it is."""

    addr: str
    who: str  # e.g. "root via sshd (session 4)"


def _text(raw: str) -> str:
    """A user or tty name as a digest may show it: printable ASCII, at most 32 chars."""
    return "".join(c if " " < c < "\x7f" else "?" for c in raw[:32])


def _address(text: str) -> str | None:
    """An address as the ban rule compares it (IPv4-mapped as IPv4, no zone), or None."""
    try:
        ip = ipaddress.ip_address(text.strip().partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_session(name: str, text: str) -> Peer | None:
    """The peer of one logind session file, or None (local, or a name for a peer)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key] = value
    addr = _address(fields.get("REMOTE_HOST", ""))
    if addr is None:
        return None
    user = _text(fields.get("USER") or f"uid {fields.get('UID', '?')}")
    via = f" via {_text(fields['SERVICE'])}" if fields.get("SERVICE") else ""
    return Peer(addr, f"{user}{via} (session {_text(name)})")


def parse_utmp(data: bytes) -> list[Peer]:
    """The peers of utmp's USER_PROCESS records."""
    peers: list[Peer] = []
    for offset in range(0, len(data) - UTMP_RECORD.size + 1, UTMP_RECORD.size):
        kind, pid, line, _id, user, host, *_rest, addr_v6, _unused = UTMP_RECORD.unpack_from(
            data, offset
        )
        if kind != USER_PROCESS:
            continue
        addr = None
        if any(addr_v6):
            # glibc puts an IPv4 peer in the first word alone, as `who --ips` reads it.
            raw = addr_v6[:4] if not any(addr_v6[4:]) else addr_v6
            addr = _address(str(ipaddress.ip_address(raw)))
        if addr is None:
            addr = _address(host.partition(b"\0")[0].decode("ascii", "replace"))
        if addr is None:
            continue
        name = _text(user.partition(b"\0")[0].decode("ascii", "replace"))
        tty = _text(line.partition(b"\0")[0].decode("ascii", "replace"))
        peers.append(Peer(addr, f"{name} on {tty} (utmp, pid {pid})"))
    return peers


def logind_peers(directory: Path = SESSIONS) -> list[Peer]:
    """The peers of logind's current sessions; none where there is no logind."""
    peers: list[Peer] = []
    try:
        entries = sorted(directory.iterdir())[:MAX_SESSIONS]
    except OSError:
        return peers
    for path in entries:
        if "." in path.name:  # c1.ref: the session's FIFO, not its record
            continue
        try:
            with path.open("rb") as f:
                text = f.read(MAX_SESSION_FILE).decode("utf-8", "replace")
        except OSError:  # ended meanwhile, or not a file
            continue
        peer = parse_session(path.name, text)
        if peer is not None:
            peers.append(peer)
    return peers


def utmp_peers(path: Path = UTMP) -> list[Peer]:
    """The peers of utmp's sessions; none where there is no utmp."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_UTMP)
    except OSError:
        return []
    return parse_utmp(data)
