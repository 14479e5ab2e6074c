"""One refusal, counted once: the durable hook line's second copy of it is dropped.

The default line is `( timeout 0.1 logger ... || python3 notify.py ... ) &`
(hostsdeny.py). When timeout kills a logger that had already sent (on a
loaded machine it was slow to exit), `||` runs the client too, and the same
refusal arrives twice: over the socket, or through the spool when the
client found the queue full. Both halves carry `i=$$`, the pid of the shell
libwrap ran (in the `( )` subshell `$$` is still that shell's). With the
sender's kernel uid, the daemon pid, the daemon, the client address and the
client port that makes the refusal's identity. A report whose identity was
seen before, and whose time (the client's `t`, else its arrival) lies
within WINDOW of the first's, is a copy: counted in `duplicates`, dropped
before anything counts it.

Keyed by the kernel's uid: a local user who sends root's identity first
makes a copy of its own report only (another uid), never one of root's.
Reports without `i` (older lines, hosts_ctl, other senders) are never
taken for copies.

Bounded, written down: at most MAX_KEPT identities per trust class, trusted
uids apart (no local user's flood pushes root's out), each kept for KEEP
seconds after it was seen; past the bound the oldest are forgotten first,
and a copy of one forgotten counts twice (at MAX_KEPT refusals a minute and
more; a real service forks a process per refusal, far fewer).

Across restarts: the trusted identities of the last WINDOW seconds go into
the state database with each commit that follows a new one (`dirty`), in
the same transaction as the events they belong to, and come back at start
(kept KEEP from then): a copy the client spooled while the daemon stopped
is still known for one when the next start ingests the spool. A crash loses
what arrived since the last commit, identities and events alike: an
original lost that way is not counted, and its copy then counts once.
Untrusted identities live in memory only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

WINDOW = 10.0  # seconds between a refusal's two copies' times, at most
KEEP = 120.0  # seconds an identity is remembered (a spool pass, a restart's ingest)
MAX_KEPT = 65_536  # identities per trust class
PERSIST_MAX = 4096  # trusted identities saved at a commit, the newest
Identity = tuple[int | None, str, str, str, str, str]  # uid, i, p, d, a, r
Saved = tuple[Identity, float]  # and the first copy's time


class _Memory:
    """Identities with the first copy's time, in the order seen, and when each goes."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: OrderedDict[Identity, tuple[float, float]] = OrderedDict()  # (time, until)

    def prune(self, now: float) -> None:
        seen = self.seen
        while seen and (len(seen) >= MAX_KEPT or next(iter(seen.values()))[1] < now):
            seen.popitem(last=False)


class Twins:
    """Tells a refusal's second copy from a new refusal (see the module docstring)."""

    def __init__(self) -> None:
        self.trusted = _Memory()
        self.untrusted = _Memory()
        self.dirty = False  # trusted identities not yet in the state database

    def copy(
        self, uid: int | None, fields: dict[str, str], received: float, now: float, *, trusted: bool
    ) -> bool:
        """Whether this report is a copy of one seen (then drop it); else remember it.
        `received` is when it arrived, `now` the clock for the memory's bound."""
        hook = fields.get("hook_pid")
        if hook is None:
            return False
        get = fields.get
        key: Identity = (
            uid,
            hook,
            get("daemon_pid", ""),
            get("daemon", ""),
            get("client_addr", ""),
            get("client_port", ""),
        )
        when = get("time")
        at = received if when is None else float(when)
        memory = self.trusted if trusted else self.untrusted
        memory.prune(now)
        first = memory.seen.get(key)
        if first is not None and abs(at - first[0]) <= WINDOW:
            return True
        memory.seen[key] = (at, now + KEEP)
        memory.seen.move_to_end(key)
        if trusted:
            self.dirty = True
        return False

    def saved(self, now: float) -> list[Saved]:
        """The trusted identities seen in the last WINDOW seconds, whose copies may still
        come: what a commit saves."""
        self.dirty = False
        recent: list[Saved] = []
        # Newest first, in the order seen (when each was seen is `until` - KEEP): stop at
        # the first seen before the window, so a commit never walks the whole memory.
        for key, (at, until) in reversed(self.trusted.seen.items()):
            if until - KEEP < now - WINDOW or len(recent) >= PERSIST_MAX:
                break
            recent.append((key, at))
        recent.reverse()
        return recent

    def restore(self, saved: Iterable[Saved], now: float) -> None:
        """Identities a previous run saved; each is kept KEEP from now."""
        for key, at in saved:
            self.trusted.seen[key] = (at, now + KEEP)
        self.trusted.prune(now)
