"""What the daemon saw of each recent source: the memory `wrapalert explain` answers from.

The aggregator's groups follow `group_by` (not always one source each) and go
once a group has been quiet for `repeat_interval`; an admin asking "why is
203.0.113.7 banned, or not?" a day later needs more. So, per client address:
its refusals per daemon and trust (count, first and last seen, what the
kernel vouched for: tcp, udp or unknown, daemon/witness.py), the values of
its latest report a silence may match, and the scans and sweeps it took part
in. Fed by the sight stage, first in every runtime's chain (so it sees every
accepted event, muted ones too: a silence hides a source from digests, not
from explain), and by the scan stage's signals (through the ledger). Built
once (the ledger's, like the twins): a reload keeps it.

Bounded, written down: three memories of recent sources, each of two
generations (a source not reported again within the last half of its bound's
new sources is forgotten, with its generation):

* `verified`: trusted reports the kernel vouched for (tcp), MAX_VERIFIED
  sources;
* `unverified`: trusted reports without a handshake behind them (udp,
  unknown), MAX_UNVERIFIED: a flood of forged UDP sources turns this one
  over and cannot push a proven attacker out of `verified`;
* `untrusted`: reports from uids not in `trusted_uids`, MAX_UNTRUSTED: any
  local user can send them, naming any address.

Per source and memory at most MAX_DAEMONS daemons (more fold into one
"(other)" entry); the last MAX_SCANS scan signals. A source forgotten is
"unknown" to `explain` unless a ban, its history or the ban log remembers it
(those are in the state database).

Across restarts: saved whole at a clean stop (a meta row of the state
database) and loaded at start, not with every group commit: a flood of new
sources would rewrite thousands of rows each 100 ms, on the very path a
flood needs fast, for what only explains. A crash loses what was seen since
the last clean start (the bans, their history and log, committed with each
change, do not).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wrapalert.model import Event
from wrapalert.scanrule import ScanSignal

MAX_VERIFIED = 8192
MAX_UNVERIFIED = 4096
MAX_UNTRUSTED = 1024
MAX_DAEMONS = 8
MAX_SCANS = 256
OTHER = "(other)"
# The fields of a report a silence may match besides daemon and client_addr (match.FIELDS).
LATEST = ("client_name", "user", "server", "host", "verdict")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Seen:
    """One daemon's reports of one source in one memory."""

    __slots__ = ("count", "first", "last", "tcp", "udp")

    def __init__(self, first: float) -> None:
        self.count = 0
        self.first = first
        self.last = first
        self.tcp = 0
        self.udp = 0


class Source(Seen):
    """One address in one memory: its first daemon's reports (itself: most sources are
    refused by one daemon, and a flood of new ones then costs one object each), the
    other daemons' in `more`, and its latest report's other values (LATEST)."""

    __slots__ = ("daemon", "latest", "more")

    def __init__(self, daemon: str, first: float) -> None:
        self.count = 0
        self.first = first
        self.last = first
        self.tcp = 0
        self.udp = 0
        self.daemon = daemon
        self.more: dict[str, Seen] | None = None
        self.latest: tuple[str, ...] = ()

    def daemons(self) -> Iterator[tuple[str, Seen]]:
        yield self.daemon, self
        if self.more:
            yield from self.more.items()


@dataclass(frozen=True)
class Sighting:
    """What one daemon reported of one address, as explain reads it. Also what a silence
    is matched against (match.Fields): the daemon, the address and the latest report's
    other values."""

    addr: str
    daemon: str
    trusted: bool
    count: int
    first: float
    last: float
    tcp: int
    udp: int
    latest: tuple[tuple[str, str], ...]

    @property
    def unknown(self) -> int:
        return self.count - self.tcp - self.udp

    def get(self, name: str) -> str:
        if name == "daemon":
            return self.daemon
        if name == "client_addr":
            return self.addr
        return dict(self.latest).get(name, "unknown")


class _Memory:
    """Sources by address, at most `limit`, in two generations (as the ban stage's counts,
    pipeline/ban.py): a source seen goes to (or stays in) the young one; when the young
    one is full it becomes the old one and the old one is forgotten. O(1) a report, no
    reordering: a source reported again within the last limit/2 new ones is kept, one
    that was not is forgotten with its generation."""

    __slots__ = ("half", "old", "young")

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.young: dict[str, Source] = {}
        self.old: dict[str, Source] = {}

    def saw(self, addr: str, event: Event) -> None:
        fields = event.fields
        get = fields.get
        daemon = get("daemon", "unknown")
        at = event.received
        source = self.young.get(addr)
        if source is None:
            source = self.old.pop(addr, None) or Source(daemon, at)
            if len(self.young) >= self.half:
                self.old, self.young = self.young, {}
            self.young[addr] = source
        seen: Seen = source
        if source.daemon != daemon:
            more = source.more
            if more is None:
                more = source.more = {}
            found = more.get(daemon)
            if found is None:
                if len(more) < MAX_DAEMONS - 2:
                    found = more[daemon] = Seen(at)
                elif (found := more.get(OTHER)) is None:  # the last place: every other daemon
                    found = more[OTHER] = Seen(at)
            seen = found
        seen.count += 1
        seen.last = at
        transport = event.transport
        if transport == "tcp":
            seen.tcp += 1
        elif transport == "udp":
            seen.udp += 1
        # LATEST's fields, written out: a generator here cost a third of the stage.
        source.latest = (
            get("client_name", "unknown"),
            get("user", "unknown"),
            get("server", "unknown"),
            get("host", "unknown"),
            get("verdict", "unknown"),
        )

    @property
    def sources(self) -> dict[str, Source]:
        """Every source kept, the older generation first."""
        return self.old | self.young

    def keep(self, addr: str, source: Source) -> None:
        """A source restored at start (oldest first, as `sources` gave them)."""
        if len(self.young) >= self.half:
            self.old, self.young = self.young, {}
        self.young[addr] = source

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class Sightings:
    """Owns the three memories and the recent scan signals."""

    def __init__(self, now: float = 0.0) -> None:
        self.verified = _Memory(MAX_VERIFIED)
        self.unverified = _Memory(MAX_UNVERIFIED)
        self.untrusted = _Memory(MAX_UNTRUSTED)
        self.scans: deque[ScanSignal] = deque(maxlen=MAX_SCANS)
        self.since = now  # when this memory began (the first start it was kept across)

    def saw(self, event: Event) -> None:
        """One accepted event (the sight stage's call: once per event, kept cheap)."""
        addr = event.fields.get("client_addr", "unknown")
        if addr == "unknown":
            return  # nothing explain could be asked about
        if not event.trusted:
            self.untrusted.saw(addr, event)
        elif event.transport == "tcp":
            self.verified.saw(addr, event)
        else:
            self.unverified.saw(addr, event)

    def scan(self, signal: ScanSignal) -> None:
        """A scan or sweep the scan stage found."""
        self.scans.append(signal)

    # -- what explain reads ------------------------------------------------------------

    def about(self, net: IPNetwork) -> list[Sighting]:
        """Every remembered report of an address in `net`, by address and daemon."""
        found: list[Sighting] = []
        single = net.num_addresses == 1
        for memory, trusted in self._memories():
            sources = memory.sources
            if single:
                # An address is stored as the wire normalised it: ipaddress's canonical text.
                addrs = [a for a in (str(net.network_address),) if a in sources]
                addrs += [a for a in sources if "%" in a and _inside(a, net)]
            else:
                addrs = [a for a in sources if _inside(a, net)]
            for addr in addrs:
                source = sources[addr]
                latest = tuple(zip(LATEST, source.latest, strict=False))
                for daemon, seen in source.daemons():
                    found.append(
                        Sighting(
                            addr,
                            daemon,
                            trusted,
                            seen.count,
                            seen.first,
                            seen.last,
                            seen.tcp,
                            seen.udp,
                            latest,
                        )
                    )
        return found

    def scans_about(self, net: IPNetwork) -> list[ScanSignal]:
        """The remembered scans of an address in `net`, and sweeps of a network that
        overlaps it, oldest first."""
        found = []
        for signal in self.scans:
            try:
                target = ipaddress.ip_network(signal.target.partition("%")[0], strict=False)
            except ValueError:
                continue
            if target.version == net.version and target.overlaps(net):
                found.append(signal)
        return found

    def __len__(self) -> int:
        return sum(len(m) for m, _ in self._memories())

    def _memories(self) -> Iterator[tuple[_Memory, bool]]:
        yield self.verified, True
        yield self.unverified, True
        yield self.untrusted, False

    # -- across restarts ---------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything, as JSON values (`restore` reads it back)."""
        memories = {}
        for name in ("verified", "unverified", "untrusted"):
            memory: _Memory = getattr(self, name)
            memories[name] = [
                [addr, list(source.latest), [_seen(d, s) for d, s in source.daemons()]]
                for addr, source in memory.sources.items()
            ]
        return {
            "since": self.since,
            "memories": memories,
            "scans": [list(signal.as_tuple()) for signal in self.scans],
        }

    def restore(self, data: object) -> bool:
        """What `export` made (at start); False, and nothing restored, for anything else (a
        damaged row costs explain's memory of the last run, nothing more)."""
        try:
            restored = Sightings(float(data["since"]))  # type: ignore[index]
            memories = data["memories"]  # type: ignore[index]
            for name in ("verified", "unverified", "untrusted"):
                memory: _Memory = getattr(restored, name)
                for addr, latest, daemons in memories.get(name, [])[-2 * memory.half :]:
                    source: Source | None = None
                    for daemon, count, first, last, tcp, udp in daemons[:MAX_DAEMONS]:
                        seen: Seen
                        if source is None:
                            seen = source = Source(str(daemon), float(first))
                        else:
                            seen = Seen(float(first))
                            source.more = (source.more or {}) | {str(daemon): seen}
                        seen.count, seen.last = int(count), float(last)
                        seen.tcp, seen.udp = int(tcp), int(udp)
                    if source is not None:
                        source.latest = tuple(str(v) for v in latest)[: len(LATEST)]
                        memory.keep(str(addr), source)
            for values in data["scans"][-MAX_SCANS:]:  # type: ignore[index]
                signal = ScanSignal.from_tuple(tuple(str(v) for v in values))
                if signal is not None:
                    restored.scans.append(signal)
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        self.verified, self.unverified, self.untrusted = (
            restored.verified,
            restored.unverified,
            restored.untrusted,
        )
        self.scans, self.since = restored.scans, restored.since
        return True


def _seen(daemon: str, s: Seen) -> list[object]:
    return [daemon, s.count, s.first, s.last, s.tcp, s.udp]


def _inside(addr: str, net: IPNetwork) -> bool:
    try:
        ip = ipaddress.ip_address(addr.partition("%")[0])
    except ValueError:
        return False
    return ip.version == net.version and ip in net
