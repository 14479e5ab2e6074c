"""Evidence: which reports the kernel vouches for, so that only those can ban.

libwrap takes a UDP client's address from the datagram, which anyone can forge
(and any local user can send UDP from any IPv6 address with IPV6_FREEBIND): a
root-run hook then reports the forged address as trusted. A TCP client's
address is proven once its handshake completed. The hook line's %A, %r and %R
(server address, client port, server port) name the refused connection, which
the wrapped service still holds while its hook runs; the witness asks the
kernel (wrapalert/sockdiag.py) for that very socket:

* "tcp": a TCP socket here holds that connection past its handshake, and no
  earlier report used that socket (its kernel cookie) as evidence: one
  connection vouches for one report, so a forged report copying a real one's
  ports cannot ride on its handshake;
* "udp": no such TCP socket, and a UDP socket is bound on the server's
  address and port (what a refused datagram leaves);
* "unknown": anything else. No ports or server address in the report (an
  older hosts.deny line, hosts_ctl), a report more than LATE seconds old by
  its own clock (spooled while the daemon was down), a connection already
  gone, a wrapped service in another network namespace, a kernel that cannot
  answer, or an untrusted sender, which is never looked up (it can never ban).

The transport is the daemon's finding, kept on the Event; no report can state
its own. Each finding is counted by outcome in Stats.evidence (`status`).

Bounded, written down: at most BUDGET lookups per batch (one drain of the
socket or one spool pass), each one non-blocking netlink round trip (about
16 us); past it the batch's other reports are "unknown" (counted `skipped`).
Used cookies are remembered for COOKIE_KEEP seconds (longer than TIME_WAIT),
at most MAX_COOKIES, the oldest forgotten first.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable

import structlog

from wrapalert.daemon.stats import Stats
from wrapalert.model import Event
from wrapalert.sockdiag import HANDSHAKE_DONE, Ends, SockDiag

log = structlog.get_logger()

TRANSPORTS = ("tcp", "udp", "unknown")
BUDGET = 256  # lookups per batch
LATE = 10.0  # seconds: a report older than this by its own clock is not looked up
COOKIE_KEEP = 120.0  # seconds a used socket stays used (TIME_WAIT is 60 s)
MAX_COOKIES = 65_536
_TCP, _UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP


class Witness:
    """Sets each event's `transport` from the kernel's tables (see the module docstring)."""

    def __init__(
        self,
        stats: Stats,
        now: Callable[[], float],
        diag: Callable[[], SockDiag] = SockDiag,
    ) -> None:
        self.stats = stats
        self.now = now
        self.budget = BUDGET
        self.error: str | None = None
        self._used: OrderedDict[int, float] = OrderedDict()  # cookie -> until
        self._open = diag
        self.diag: SockDiag | None = None  # opened at the first lookup

    def new_batch(self) -> None:
        """A drain or a spool pass begins: its lookups are counted afresh."""
        self.budget = BUDGET

    def check(self, event: Event) -> None:
        """Decide `event.transport`, and count why."""
        # The flood's path first (a local user's reports, an older line's): no lookup.
        if not event.trusted:
            outcome = "unchecked"
        elif "server_port" not in event.fields:
            outcome = "no_ports"
        else:
            outcome = self._outcome(event)
            if outcome in TRANSPORTS:
                event.transport = outcome
        self.stats.evidence[outcome] += 1

    def _outcome(self, event: Event) -> str:
        why = self._not_asked(event)
        if why is not None:
            return why
        get = event.fields.get
        try:
            ends = Ends(
                get("server_addr", ""),
                int(get("server_port", "0")),
                get("client_addr", "unknown"),
                int(get("client_port", "0")),
            )
            return self._ask(ends)
        except ValueError:
            return "no_ports"  # not two addresses of one family: "unknown", a name, a zone
        except OSError as exc:
            self._failed(str(exc))
            return "failed"

    def _not_asked(self, event: Event) -> str | None:
        """Why the kernel is not asked about this report, or None."""
        if not event.trusted:
            return "unchecked"
        get = event.fields.get
        server, rport, sport = get("server_addr"), get("client_port"), get("server_port")
        if not (server and rport and sport) or rport == "0" or sport == "0":
            return "no_ports"
        if self._late(event):
            return "late"
        if self.budget <= 0:
            return "skipped"
        return None

    @staticmethod
    def _late(event: Event) -> bool:
        """Older than LATE by its own clock (the client's `t`); a spooled report without
        one says nothing of its age, so it is late too."""
        when = event.fields.get("time")
        if when is None:
            return event.origin == "spool"
        return float(when) < event.received - LATE

    def _ask(self, ends: Ends) -> str:
        """The kernel's answer: a TCP socket past its handshake, else a UDP socket."""
        if self.diag is None:
            self.diag = self._open()
        self.budget -= 1
        found = self.diag.lookup(_TCP, ends)
        if found is not None and found.state in HANDSHAKE_DONE:
            return self._use(found.cookie)
        self.budget -= 1
        found = self.diag.lookup(_UDP, ends)
        self.error = None
        return "udp" if found is not None else "gone"

    def _use(self, cookie: int) -> str:
        """ "tcp", unless an earlier report used this socket as its evidence ("reused")."""
        self.error = None
        now = self.now()
        used = self._used
        while used and (len(used) >= MAX_COOKIES or next(iter(used.values())) < now):
            used.popitem(last=False)
        if cookie in used:
            return "reused"
        used[cookie] = now + COOKIE_KEEP
        return "tcp"

    def _failed(self, error: str) -> None:
        if error != self.error:
            log.error("evidence_unavailable", error=error, effect="reports count as unknown")
        self.error = error

    def status(self) -> dict[str, object]:
        """The `evidence` object of `wrapalert status`: outcomes so far, and the error that
        keeps the kernel from answering, if any."""
        return {"error": self.error, **dict(self.stats.evidence)}

    def close(self) -> None:
        if self.diag is not None:
            self.diag.close()
            self.diag = None
