"""One refusal, counted once: the durable hook line's second copy of it is dropped.

The default line is `( timeout 0.1 logger ... || python3 notify.py ... ) &`
(hostsdeny.py). When timeout kills a logger that had already sent (on a
loaded machine it was slow to exit, or its send to a full queue went through
just as the time ran out), `||` runs the client too, and the same refusal
arrives twice: over the socket, or through the spool when the client found
the queue full. Both halves carry `i=$$`, the pid of the shell libwrap ran
(in the `( )` subshell `$$` is still that shell's). With the sender's kernel
uid, the daemon pid, the daemon, the client address and the client port that
makes the refusal's identity. A report whose identity arrived before, within
KEEP seconds, is a copy: counted in `duplicates`, dropped before anything
counts it.

Arrival, not the reports' own times: logger's copy carries none, and it may
wait in the socket's queue (a busy daemon, a daemon restarting under systemd)
while the client's copy goes through the spool, so the two can arrive in
either order and seconds apart (`bench/exactly_once.py` saw more than ten
under load 20). Two distinct refusals share an identity only if both pids
came round again (pid_max: 32768 on small machines, a few processes per
refusal) for the same address and client port within KEEP: the later one
would be dropped, an undercount of at most one refusal in thousands, never
a double count.

Keyed by the kernel's uid: a local user who sends root's identity first
makes a copy of its own report only (another uid), never one of root's.
Reports without `i` (older lines, hosts_ctl, other senders) are never taken
for copies.

Bounded, written down: at most MAX_KEPT identities per trust class, trusted
uids apart (no local user's flood pushes root's out), each kept KEEP
seconds after it arrived; past the bound the oldest are forgotten first,
and a copy of one forgotten counts twice (at MAX_KEPT refusals within KEEP;
a real service forks a process per refusal, far fewer).

Across restarts: the trusted identities that arrived in the last SAVE
seconds (at most PERSIST_MAX, the newest) go into the state database with
each commit that follows a new one (`dirty`), in the same transaction as
the events they belong to, and come back at start (kept KEEP from then): a
copy the client spooled, or logger queued in a socket systemd holds, while
the daemon stopped is still known for one when the next start reads it. A
crash loses what arrived since the last commit, identities and events
alike: an original lost that way is not counted, and its copy then counts
once. Untrusted identities live in memory only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

KEEP = 120.0  # seconds an identity is remembered after it arrived
SAVE = 30.0  # seconds of arrivals a commit saves (a copy follows its original closely)
MAX_KEPT = 65_536  # identities per trust class
PERSIST_MAX = 4096  # trusted identities saved at a commit, the newest
Identity = tuple[int | None, str, str, str, str, str]  # uid, i, p, d, a, r
Saved = tuple[Identity, float]  # and when it arrived


class _Memory:
    """Identities in the order they arrived, each with its arrival."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: OrderedDict[Identity, float] = OrderedDict()

    def prune(self, now: float) -> None:
        seen = self.seen
        while seen and (len(seen) >= MAX_KEPT or next(iter(seen.values())) < now - KEEP):
            seen.popitem(last=False)


class Twins:
    """Tells a refusal's second copy from a new refusal (see the module docstring)."""

    def __init__(self) -> None:
        self.trusted = _Memory()
        self.untrusted = _Memory()
        self.dirty = False  # trusted identities not yet in the state database

    def copy(self, uid: int | None, fields: dict[str, str], now: float, *, trusted: bool) -> bool:
        """Whether this report, arriving `now`, is a copy of one that arrived before (then
        drop it); else remember it."""
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
        memory = self.trusted if trusted else self.untrusted
        memory.prune(now)
        if key in memory.seen:
            return True
        memory.seen[key] = now
        if trusted:
            self.dirty = True
        return False

    def saved(self, now: float) -> list[Saved]:
        """The trusted identities that arrived in the last SAVE seconds, whose copies may
        still come: what a commit saves."""
        self.dirty = False
        recent: list[Saved] = []
        # Newest first, in the order they arrived: stop at the first one before the
        # horizon, so a commit never walks the whole memory.
        for key, arrived in reversed(self.trusted.seen.items()):
            if arrived < now - SAVE or len(recent) >= PERSIST_MAX:
                break
            recent.append((key, arrived))
        recent.reverse()
        return recent

    def restore(self, saved: Iterable[Saved], now: float) -> None:
        """Identities a previous run saved; each is kept KEEP from now (the downtime does
        not count: the copies waited through it too)."""
        for key, _arrived in saved:
            self.trusted.seen[key] = now
        self.trusted.prune(now)
