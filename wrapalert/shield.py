"""What must not be banned right now: this host's own addresses and the peers of
logged-in sessions, read fresh at each decision (they change while the daemon runs).

The configured allowlist is the rule's (banrule.py); this is the part that is
not configuration. A target that overlaps one of these is refused: "allowlisted"
for the host's own address, "session" for a logged-in peer (recorded and shown
like every refusal). Reads: hostaddr.py and sessions.py; their cost per decision
is in bench/results/host_reads.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wrapalert import hostaddr, sessions
from wrapalert.banrule import IPNetwork, overlapping


@dataclass(frozen=True)
class Protected:
    """Why a target must not be banned: `why` is the refusal reason, `detail` says whom."""

    why: str  # "allowlisted" (this host's address) or "session"
    detail: str


class Shield:
    """Reads, at each `check`, the host's addresses and the logged-in sessions' peers.

    The sessions are parsed again only when their files changed: logind replaces a
    session's file by a rename (the directory's mtime moves), utmp is rewritten in place
    (its own mtime moves). The addresses have no such marker and are asked for each time
    (one netlink dump, ~0.1 ms: bench/results/host_reads.md)."""

    def __init__(
        self,
        addresses: Callable[[], Iterable[str]] = hostaddr.own_addresses,
        sessions_dir: Path = sessions.SESSIONS,
        utmp: Path = sessions.UTMP,
    ) -> None:
        self.addresses = addresses
        self.sessions_dir = sessions_dir
        self.utmp = utmp
        self._seen: tuple[object, ...] | None = None  # the files' stamps when last read
        self._peers: dict[IPNetwork, sessions.Peer] = {}

    def check(self, target: str) -> Protected | None:
        """Why `target` must not be banned now, or None."""
        own = [ipaddress.ip_network(a, strict=False) for a in self.addresses()]
        if (hit := overlapping(target, own)) is not None:
            return Protected("allowlisted", f"this host's address {hit.network_address}")
        peers = self._session_peers()
        if (hit := overlapping(target, peers)) is not None:
            peer = peers[hit]
            return Protected("session", f"logged in from {peer.addr}: {peer.who}")
        return None

    def _session_peers(self) -> dict[IPNetwork, sessions.Peer]:
        seen = (_stamp(self.sessions_dir), _stamp(self.utmp))
        if seen != self._seen:
            peers = [*sessions.logind_peers(self.sessions_dir), *sessions.utmp_peers(self.utmp)]
            self._peers = {ipaddress.ip_network(p.addr): p for p in peers}
            self._seen = seen
        return self._peers


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file (or a directory's list) changes; None if it is absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
