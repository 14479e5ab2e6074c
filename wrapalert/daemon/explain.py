"""`wrapalert explain ADDRESS`: everything the daemon knows of one source or network, and
what keeps it banned, or from being banned.

The control API decodes the request (netaddr.query_network: an address, or a
network whose addresses are taken together) and asks `Explainer.explain`.
The answer is put together from the parts that own each fact, asked, never
copied:

* the sightings (daemon/sightings.py): refusals per daemon and trust, first
  and last seen, what the kernel vouched for (tcp, udp, unknown); the scans
  and sweeps the source took part in;
* the ban book (daemon/bans.py): bans in force (reason, origin and hosts,
  expiry, the command that lifts one), the history within `ban_memory` and
  the ban log;
* the ban policy: what keeps a target from a ban now (allowlist, this host's
  address, a logged-in session, the cap), and how long its next ban would be;
* the runtime in force's ban stage: how near the threshold and a scan it is;
* the silence book: the silences that mute it.

The answer is JSON values (the reply, and `explain --json`);
wrapalert/explainview.py draws it on a terminal. `known` is False when no
part remembers the source: `wrapalert explain` then exits 1. Every value
that came from a report (names, daemons) is attacker text: the view strips
control characters before printing.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

from wrapalert.clock import Clock
from wrapalert.daemon.banpolicy import Ban
from wrapalert.daemon.bans import BanFacts, Bans
from wrapalert.daemon.runtime import Runtime
from wrapalert.daemon.sightings import Sighting, Sightings
from wrapalert.daemon.silences import Silences
from wrapalert.digest_view import duration, ordinal
from wrapalert.pipeline.ban import BanProgress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ADDRESSES = 64  # addresses of a network an answer names at most, the busiest
MAX_VERDICTS = 16  # ban targets of a network an answer judges at most, the busiest
MAX_NAMES = 8  # client names an answer lists at most


class InForce(Protocol):
    """Where the runtime in force is found (daemon/reload.py's Reloader)."""

    @property
    def runtime(self) -> Runtime: ...


class Explainer:
    """Answers `wrapalert explain` from the daemon's parts."""

    def __init__(
        self,
        *,
        sightings: Sightings,
        bans: Bans,
        silences: Silences,
        runtimes: InForce,
        clock: Clock,
    ) -> None:
        self.sightings = sightings
        self.bans = bans
        self.silences = silences
        self.runtimes = runtimes
        self.clock = clock

    def explain(self, net: IPNetwork) -> dict[str, Any]:
        """Everything known of the addresses in `net`, as JSON values."""
        now = self.clock.now()
        seen = self.sightings.about(net)
        scans = self.sightings.scans_about(net)
        facts = self.bans.about(net)
        addresses = _busiest(seen)
        single = net.num_addresses == 1
        return {
            "query": str(net.network_address) if single else str(net),
            "known": bool(seen or scans or facts.current or facts.history or facts.log),
            "now": now,
            "since": self.sightings.since,
            "remembered": len(self.sightings),
            "addresses": addresses[:MAX_ADDRESSES],
            "more_addresses": max(0, len(addresses) - MAX_ADDRESSES),
            "names": _names(seen),
            "refusals": _refusals(seen),
            "scans": [
                {
                    "kind": s.kind,
                    "target": s.target,
                    "daemons": list(s.daemons),
                    "sources": s.sources,
                    "first": s.first,
                    "last": s.last,
                    "text": s.describe(),
                }
                for s in scans
            ],
            "bans": [self._ban(b) for b in facts.current],
            "history": [
                {"target": target, "bans": len(times), "first": times[0], "last": times[-1]}
                for target, times in facts.history.items()
            ],
            "past": [
                {
                    "time": r.time,
                    "action": r.action,
                    "target": r.target,
                    "reason": r.reason,
                    "until": r.until,
                    "nth": _nth(facts.history.get(r.target, ()), r.time)
                    if r.action in ("banned", "would ban")
                    else 0,
                }
                for r in facts.log
            ],
            "past_total": facts.logged,
            "mode": self.bans.mode,
            "verdicts": [
                self._verdict(t, reports, facts, now)
                for t, reports in self._targets(net, seen, facts)[:MAX_VERDICTS]
            ],
            "silences": [
                {
                    "id": s.id,
                    "matchers": [str(m) for m in s.matchers],
                    "expires": s.expires,
                    "comment": s.comment,
                }
                for s in self.silences.matching(seen, net)
            ],
        }

    # -- the parts of an answer ---------------------------------------------------------

    @staticmethod
    def _ban(ban: Ban) -> dict[str, Any]:
        return ban.as_dict() | {"lift": f"wrapalert ban del {ban.target}"}

    def _targets(
        self, net: IPNetwork, seen: list[Sighting], facts: BanFacts
    ) -> list[tuple[str, list[Sighting]]]:
        """The ban targets the answer judges, with the reports of each: banned ones first,
        then the busiest. A single address is judged even when nothing is known of it."""
        rule = self.bans.policy.rule
        reports: dict[str, list[Sighting]] = defaultdict(list)
        for sighting in seen:
            target = rule.target(sighting.addr)
            if target is not None:
                reports[target].append(sighting)
        if net.num_addresses == 1 and not reports:
            target = rule.target(str(net.network_address))
            if target is not None:
                reports[target] = []
        banned = {b.target for b in facts.current}
        for target in banned:
            if _inside(target, net):
                reports.setdefault(target, [])
        return sorted(
            reports.items(),
            key=lambda item: (item[0] not in banned, -sum(r.count for r in item[1]), item[0]),
        )

    def _verdict(
        self, target: str, reports: list[Sighting], facts: BanFacts, now: float
    ) -> dict[str, Any]:
        """Whether `target` is banned, and if not, the first rule that keeps it from it."""
        policy = self.bans.policy
        covering = [b for b in facts.current if _covers(b.target, target)]
        if covering:
            ban = covering[0]
            state = "would be banned (dry-run)" if ban.dry_run else "banned"
            return _judged(target, state, ban.reason, _ban_detail(ban), ban=self._ban(ban))
        grown = policy.growth(target, now)
        next_ban = {"nth": grown.nth, "seconds": grown.seconds}
        why, detail = self._why_not(target, reports, now)
        return _judged(target, "not banned", why, detail, next_ban=next_ban)

    def _why_not(self, target: str, reports: list[Sighting], now: float) -> tuple[str, str]:
        """The first rule that keeps `target` from a ban: the book's (no sink, the
        allowlist, this host, a session, the cap, a refusal lately), the reports' (none
        trusted, none verified), else the count toward the threshold."""
        found = self._rule_against(target, now) or _unproven(reports)
        if found is not None:
            return found
        stage = self.runtimes.runtime.pipeline.ban
        if stage is None:  # a sink without its stage cannot be; said plainly if it were
            return "no ban stage", "nothing counts refusals toward a ban"
        addr = reports[0].addr if reports else target.partition("/")[0]
        return "below threshold", _progress(stage.progress(target, addr, now))

    def _rule_against(self, target: str, now: float) -> tuple[str, str] | None:
        if self.bans.sink is None:
            return "no nftables sink", "banning is off: no [[sink]] of type nftables"
        policy = self.bans.policy
        obstacle = policy.obstacle(target)
        if obstacle is not None:
            return obstacle.why, obstacle.detail
        refused_until = policy.refused.get(target)
        if refused_until is not None:
            return "refused lately", "looked at again after " + duration(refused_until - now)
        return None


def _unproven(reports: list[Sighting]) -> tuple[str, str] | None:
    """Why these reports cannot ban, if they cannot: none trusted, or none verified."""
    trusted = [r for r in reports if r.trusted]
    untrusted = sum(r.count for r in reports if not r.trusted)
    if untrusted and not trusted:
        return "untrusted only", (
            f"{untrusted:,} report(s), all from uids not in trusted_uids: they never ban"
        )
    if trusted and not sum(r.tcp for r in trusted):
        udp = sum(r.udp for r in trusted)
        unknown = sum(r.unknown for r in trusted)
        return "unverified transport", (
            f"{udp + unknown:,} trusted refusal(s), no TCP handshake seen (udp {udp:,}, "
            f"unknown {unknown:,}): never ban"
        )
    return None


def _judged(target: str, state: str, why: str, detail: str, **more: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON values
    return {"target": target, "state": state, "why": why, "detail": detail, **more}


def _ban_detail(ban: Ban) -> str:
    length = duration(ban.until - ban.since)
    count = f"{ordinal(ban.nth)} ban, " if ban.nth > 1 else ""
    origin = f"; fleet: banned on {', '.join(ban.hosts)}" if ban.origin == "fleet" else ""
    return f"{count}{length}{origin}"


def _progress(p: BanProgress) -> str:
    """ "7 of 10 verified refusals in the last 10 min" (and, if scans ban, "; scan: 1 of 3
    daemons in 10 min")."""
    text = f"{p.refusals:,} of {p.threshold:,} verified refusals in the last {duration(p.window)}"
    if p.scan_daemons:
        text += f"; scan: {p.daemons} of {p.scan_daemons} daemons in {duration(p.scan_window)}"
    return text


def _refusals(seen: Iterable[Sighting]) -> list[dict[str, Any]]:
    """Per daemon and trust, over every address: counts, first and last, transports;
    the latest first."""
    rows: dict[tuple[str, bool], dict[str, Any]] = {}
    for s in seen:
        row = rows.get((s.daemon, s.trusted))
        if row is None:
            row = rows[s.daemon, s.trusted] = {
                "daemon": s.daemon,
                "trust": "trusted" if s.trusted else "untrusted",
                "count": 0,
                "tcp": 0,
                "udp": 0,
                "unknown": 0,
                "first": s.first,
                "last": s.last,
                "addresses": 0,
            }
        row["count"] += s.count
        row["tcp"] += s.tcp
        row["udp"] += s.udp
        row["unknown"] += s.unknown
        row["first"] = min(row["first"], s.first)
        row["last"] = max(row["last"], s.last)
        row["addresses"] += 1
    return sorted(rows.values(), key=lambda r: (-r["last"], r["daemon"], r["trust"]))


def _nth(times: tuple[float, ...], at: float) -> int:
    """Which of its target's remembered bans the one made `at` was (0: not remembered)."""
    return times.index(at) + 1 if at in times else 0


def _busiest(seen: Iterable[Sighting]) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for s in seen:
        counts[s.addr] += s.count
    return sorted(counts, key=lambda a: (-counts[a], a))


def _names(seen: Iterable[Sighting]) -> list[str]:
    names = {dict(s.latest).get("client_name", "unknown") for s in seen}
    return sorted(n for n in names if n not in ("unknown", ""))[:MAX_NAMES]


def _network(target: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(target.partition("%")[0], strict=False)
    except ValueError:
        return None


def _inside(target: str, net: IPNetwork) -> bool:
    other = _network(target)
    return other is not None and other.version == net.version and other.overlaps(net)


def _covers(ban: str, target: str) -> bool:
    """Whether a ban of `ban` drops `target`'s traffic (a network ban holds an address)."""
    outer, inner = _network(ban), _network(target)
    if outer is None or inner is None or outer.version != inner.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]  # same version, checked above
