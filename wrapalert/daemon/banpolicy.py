"""The ban policy: what is banned, what is refused, what expires. Pure: no kernel, no
state database, no clock of its own (every decision is given `now`), no logging.

The ban book (daemon/bans.py) asks it and records what it decides; the kernel
side (daemon/bankernel.py) carries the bans out. Decisions, by the rule in force
(banrule.py, the nftables sink's `[[sink]]`) and the shield (shield.py: this
host's addresses, logged-in sessions' peers, read at each decision):

- an automatic request (the ban stage: a threshold or a scan) is banned for
  `ban_for`, or refused: "allowlisted" (the rule's allowlist or this host's
  address: not looked at again for `ban_for`), "session" (a logged-in peer) or
  "cap" (`max_bans` reached), both looked at again after a `window`;
- a ban by hand (`wrapalert ban add`) is refused with the reason and what to do
  (`BanRefusedError`), a session's peer only without `force`;
- a ban another host made (the fleet's, daemon/fleet.py) is followed by the
  same checks (`follow`), as a ban of origin "fleet" naming those hosts; such
  bans take at most half of `max_bans`, so the fleet never crowds out this
  host's own, and their refusals are not remembered here (the book does: a
  fleet refusal must not stop this host's own counting of that source);
- bans the rule would not make now are lifted: targets allowlisted since,
  automatic bans of a network of shared addresses (NAT64, Teredo, 6to4), and
  fleet bans once the rule no longer follows the fleet;
- a ban or a refusal ends at its time.

Bounded, written down: at most `max_bans` bans; refusals are remembered for at
most MAX_REFUSED targets, the oldest forgotten first.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from wrapalert.banrule import SHARED_PREFIXES, BanRule, BanTargetError
from wrapalert.fleetwire import fleet_reason
from wrapalert.shield import Protected

MAX_REFUSED = 16_384
MAX_MANUAL = 366 * 86400.0  # seconds: `ban add --for` at most a year


class Guard(Protocol):
    """What must not be banned right now (shield.py's Shield)."""

    def check(self, target: str) -> Protected | None: ...


class BanRefusedError(ValueError):
    """A ban by hand the policy refuses; the text says why and what to do."""


@dataclass
class Ban:
    target: str
    reason: str
    since: float
    until: float
    dry_run: bool = False
    origin: str = "local"  # "local": this host's proof or admin; "fleet": other hosts'
    hosts: tuple[str, ...] = ()  # a fleet ban's: the hosts that banned the target

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "dry_run": self.dry_run,
            "origin": self.origin,
            "hosts": list(self.hosts),
        }


@dataclass(frozen=True)
class Refusal:
    """An automatic ban refused: why (and whom, for a session), and until when the
    target is not looked at again."""

    target: str
    reason: str  # the request's ("3 refusals", "scan of 3 daemons")
    why: str  # "allowlisted", "session" or "cap"
    detail: str
    until: float


class BanPolicy:
    """The bans in force and the refusals remembered, and the rules that change them."""

    def __init__(self, guard: Guard, rule: BanRule | None = None) -> None:
        self.guard = guard
        self.rule = rule or BanRule()
        self.active: dict[str, Ban] = {}
        self.refused: dict[str, float] = {}  # target -> until when it is not looked at again
        # target -> until: active bans and remembered refusals. The ban stage reads this
        # very dict (never writes it): a settled target is not counted until it expires.
        self.settled: dict[str, float] = {}
        self.followed: set[str] = set()  # the active bans of origin "fleet"

    # -- automatic bans -------------------------------------------------------------

    def decide(self, target: str, reason: str, now: float) -> Ban | Refusal | None:
        """An automatic request: the ban made (in dry-run: noted only), the refusal, or
        None when the target is banned already."""
        if target in self.active:
            return None
        protected = self._protected(target)
        if protected is not None:
            return self._refuse(target, reason, protected, now)
        ban = Ban(target, reason, now, now + self.rule.ban_for, self.rule.dry_run)
        self.record(ban)
        return ban

    def _protected(self, target: str, *, fleet: bool = False) -> Protected | None:
        if self.rule.allowed(target):
            return Protected("allowlisted", "")
        protected = self.guard.check(target)
        if protected is not None:
            return protected
        if len(self.active) >= self.rule.max_bans:
            return Protected("cap", f"max_bans {self.rule.max_bans}")
        if fleet and len(self.followed) >= max(1, self.rule.max_bans // 2):
            return Protected(
                "cap", f"fleet bans take at most half of max_bans {self.rule.max_bans}"
            )
        return None

    # -- the fleet's bans ----------------------------------------------------------

    def follow(
        self, target: str, hosts: tuple[str, ...], until: float, now: float, *, more: int = 0
    ) -> Ban | Refusal | None:
        """A ban other hosts made (`hosts`, and `more` not named; ending at `until`), for
        this host to follow:
        the ban to record (new, or one in force with other hosts or another end), the
        Refusal this host's rules give (not remembered here), or None when nothing
        changes (the same fleet ban, or a ban of this host's own, which stands)."""
        reason = fleet_reason(hosts, more)
        current = self.active.get(target)
        # A year at most, as a ban by hand: counted from the ban's start, so it holds still.
        until = min(until, (now if current is None else current.since) + MAX_MANUAL)
        if current is not None:
            if current.origin != "fleet" or (current.hosts, current.until) == (hosts, until):
                return None
            return Ban(target, reason, current.since, until, current.dry_run, "fleet", hosts)
        protected = self._protected(target, fleet=True)
        if protected is not None:
            return Refusal(target, reason, protected.why, protected.detail, until)
        return Ban(target, reason, now, until, self.rule.dry_run, "fleet", hosts)

    def _refuse(self, target: str, reason: str, protected: Protected, now: float) -> Refusal:
        why = protected.why
        # Cap and session: looked at again after a window (a slot may free, the session
        # may end); allowlisted: after ban_for.
        until = now + (self.rule.ban_for if why == "allowlisted" else self.rule.window)
        if len(self.refused) >= MAX_REFUSED:
            oldest = next(iter(self.refused))
            del self.refused[oldest]
            self.settled.pop(oldest, None)
        self.refused[target] = until
        self.settled[target] = until
        return Refusal(target, reason, why, protected.detail, until)

    # -- bans by hand ---------------------------------------------------------------

    def by_hand(self, text: str, seconds: float | None, now: float, *, force: bool) -> Ban:
        """The ban `wrapalert ban add` asks for (`seconds` None: the rule's `ban_for`),
        not yet recorded: the kernel holds it first. BanRefusedError says why not."""
        target = self.target(text, force=force)
        seconds = self.rule.ban_for if seconds is None else seconds
        if not 0 < seconds <= MAX_MANUAL:
            raise BanRefusedError("a ban lasts more than 0 seconds and at most a year")
        if self.rule.allowed(target):
            raise BanRefusedError(f"{target} is allowlisted: it is never banned")
        protected = self.guard.check(target)
        if protected is not None and (protected.why != "session" or not force):
            hint = (
                " (--force bans it: the session goes on, established connections pass a ban)"
                if protected.why == "session"
                else ""
            )
            raise BanRefusedError(f"{target} holds {protected.detail}{hint}")
        if target not in self.active and len(self.active) >= self.rule.max_bans:
            raise BanRefusedError(f"max_bans ({self.rule.max_bans}) reached")
        return Ban(target, "by hand", now, now + float(seconds), self.rule.dry_run)

    def target(self, text: str, *, force: bool = False) -> str:
        """The target an address or network names (BanRefusedError: none it may ban)."""
        try:
            return self.rule.parse_target(text, force=force)
        except BanTargetError as exc:
            raise BanRefusedError(str(exc)) from None

    # -- the book's changes --------------------------------------------------------

    def record(self, ban: Ban) -> None:
        self.active[ban.target] = ban
        self.settled[ban.target] = ban.until
        self.refused.pop(ban.target, None)
        if ban.origin == "fleet":
            self.followed.add(ban.target)
        else:
            self.followed.discard(ban.target)

    def lift(self, target: str) -> Ban | None:
        """End a ban now; the ban, or None if there was none."""
        ban = self.active.pop(target, None)
        if ban is not None:
            self.settled.pop(target, None)
            self.followed.discard(target)
        return ban

    def due(self, now: float) -> list[Ban]:
        """The bans that ended by `now` (removed); refusals past their time are forgotten."""
        ended = []
        for target, until in list(self.settled.items()):
            if until > now:
                continue
            del self.settled[target]
            ban = self.active.pop(target, None)
            if ban is not None:
                self.followed.discard(target)
                ended.append(ban)
            else:
                self.refused.pop(target, None)
        return ended

    def forbidden(self) -> list[tuple[Ban, str]]:
        """Bans the rule in force would not make, with why: targets allowlisted since (an
        entry added, then a restart or reload), and automatic bans of a network of shared
        addresses (a NAT64 /64 an earlier version made: every translated client)."""
        found = []
        for ban in self.active.values():
            if self.rule.allowed(ban.target):
                found.append((ban, "allowlisted"))
            elif ban.reason != "by hand" and _shared_network(ban.target):
                found.append((ban, "a network of NAT64, Teredo or 6to4 addresses"))
            elif ban.origin == "fleet" and not self.rule.follow:
                found.append((ban, "the fleet is no longer followed (follow = false)"))
        return found

    def adopt(self, found: dict[str, float], now: float) -> None:
        """Bans the kernel holds that the book does not know (target -> seconds left): the
        book's own state was lost, so the kernel's word stands."""
        for target, left in found.items():
            if target not in self.active:
                self.record(Ban(target, "found in the kernel", now, now + left))

    def kernel_bans(self) -> dict[str, float]:
        """The bans the kernel must hold: target -> until (dry-run ones never)."""
        return {b.target: b.until for b in self.active.values() if not b.dry_run}

    def soonest(self) -> float | None:
        """When the next ban or refusal ends, if any."""
        return min(self.settled.values(), default=None)


def _shared_network(target: str) -> bool:
    net = ipaddress.ip_network(target, strict=False)
    if isinstance(net, ipaddress.IPv4Network) or net.prefixlen == 128:
        return False
    return any(net.overlaps(p) for p in SHARED_PREFIXES)
