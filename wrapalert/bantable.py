"""The ban table in nft's JSON: its layout, what the kernel holds, and the changes that
make the kernel hold what the ban book holds. Pure: sinks/nftables.py runs nft.

One `inet` table the daemon owns:

    set ban4      ipv4_addr  timeout            single IPv4 addresses: nearly every ban
    set ban6net   ipv6_addr  timeout            IPv6 networks of `ipv6_prefix` bits, as their
                                                network address
    set ban6host  ipv6_addr  timeout            single IPv6 addresses (/128: NAT64, Teredo, 6to4)
    set ban4net   ipv4_addr  interval,timeout   IPv4 networks (only `ban add --force`)
    set ban6      ipv6_addr  interval,timeout   IPv6 networks of other lengths (`--force`, or
                                                bans made under another ipv6_prefix)
    chain input   type filter hook input priority filter - 10; policy accept
        ct state established,related accept        comment "wrapalert owner pid=.. start=.."
        ip saddr @ban4 drop                         comment "wrapalert ban4"
        ip saddr @ban4net drop                      comment "wrapalert ban4net"
        ip6 saddr & <mask> @ban6net drop            comment "wrapalert ban6net/64"
        ip6 saddr @ban6host drop                    comment "wrapalert ban6host"
        ip6 saddr @ban6 drop                        comment "wrapalert ban6"

Why hash sets for the common case: nft checks a new element of an interval
set against the whole set, so one ban into 100,000 IPv6 networks took 1.4 s
against 3 ms for a hash set (bench/results/nft_cost.md). The interval sets
are kept for what cannot be a hash key: prefixes of other lengths, rare.

Why `ct state established,related accept` first: a ban must not break the
host's own traffic. Replies to connections the host opened (its DNS
resolver's answers, its gateway's) and sessions it accepted before the ban
pass; new connections from a banned source are dropped, and so are its
`invalid` packets (no connection they belong to) and `untracked` ones (an
admin's notrack rule must not let a banned source through). The accept ends
only this chain: every other chain of the ruleset still sees the packet.

The rules are told apart by their comments, which survive every nft version's
way of printing expressions; the first carries the owner marker (the pid and
start time of the daemon that wrote it): a second daemon on the same table
is refused (daemon/bankernel.py).

nft 1.0.6 (Debian 12) fails a transaction that flushes an interval set and
adds an element it holds, or adds elements to an interval set created in the
same transaction; so nothing here flushes a set to re-fill it: the kernel's
content is read and only the difference is sent, and sets are declared in a
transaction of their own before elements are added. Elements go in batches of
at most CHUNK per transaction, one command per set: nft's time per command
grows with the set (per-element commands made a 30,000-ban re-sync take 19 s).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CHAIN = "input"
PRIORITY = -10  # filter - 10: before the usual filter chains, so their accepts come too late
CHUNK = 10_000  # elements per transaction at most (bench: 10,000 hash elements take ~0.1 s)
SLACK = 3.0  # seconds: timeouts are whole seconds, and listing takes time
# name -> (type, flags), in the order the chain matches them
SETS: dict[str, tuple[str, frozenset[str]]] = {
    "ban4": ("ipv4_addr", frozenset({"timeout"})),
    "ban4net": ("ipv4_addr", frozenset({"interval", "timeout"})),
    "ban6net": ("ipv6_addr", frozenset({"timeout"})),
    "ban6host": ("ipv6_addr", frozenset({"timeout"})),
    "ban6": ("ipv6_addr", frozenset({"interval", "timeout"})),
}
OWNER = re.compile(r"^wrapalert owner pid=(\d{1,10}) start=(\d{1,20})$")

Command = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The daemon that keeps a table: its pid and the pid's start time (clock ticks
    after boot, /proc/PID/stat), which a reused pid does not share."""

    pid: int
    start: int

    def comment(self) -> str:
        return f"wrapalert owner pid={self.pid} start={self.start}"

    @classmethod
    def parse(cls, comment: object) -> Owner | None:
        match = OWNER.match(comment) if isinstance(comment, str) else None
        return cls(int(match[1]), int(match[2])) if match else None


@dataclass
class KernelSet:
    """One set as the kernel lists it: declaration, and elements by target."""

    kind: str
    flags: frozenset[str]
    # target -> (seconds until it expires, None without a timeout; the value nft listed)
    elements: dict[str, tuple[float | None, Any]] = field(default_factory=dict)


@dataclass
class KernelTable:
    """What `nft -j list table inet NAME` showed (exists False: no such table)."""

    exists: bool
    sets: dict[str, KernelSet] = field(default_factory=dict)
    chain: dict[str, Any] | None = None  # the input chain's type, hook, prio, policy
    rules: list[str] = field(default_factory=list)  # the input chain's rule comments
    owner: Owner | None = None

    @property
    def targets(self) -> dict[str, float | None]:
        """Every element of our sets: target -> seconds left."""
        return {t: left for s in self.sets.values() for t, (left, _) in s.elements.items()}


@dataclass(frozen=True)
class Drift:
    """How the kernel differs from the book. The lists name targets; `declaration` says
    what of the table itself was wrong; `unenforced` counts the book's bans the kernel
    did not drop (missing, or their set or rule broken)."""

    table_missing: bool = False
    declaration: tuple[str, ...] = ()
    marker: bool = False  # the owner marker needs writing (a new daemon, a stale owner)
    missing: tuple[str, ...] = ()  # banned in the book, not in the kernel
    extra: tuple[str, ...] = ()  # in our sets, not banned in the book
    expiry: tuple[str, ...] = ()  # in the kernel with a timeout far from the book's
    unenforced: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything but the marker differed (what a repair counts)."""
        return bool(
            self.table_missing or self.declaration or self.missing or self.extra or self.expiry
        )

    def summary(self) -> str:
        parts = []
        if self.table_missing:
            parts.append("the table was missing")
        parts += self.declaration
        for name, items in (("missing", self.missing), ("extra", self.extra)):
            if items:
                more = ", ..." if len(items) > 3 else ""
                parts.append(f"{len(items)} {name} ({', '.join(items[:3])}{more})")
        if self.expiry:
            parts.append(f"{len(self.expiry)} with a wrong timeout")
        return "; ".join(parts) or "in step"


@dataclass(frozen=True)
class Layout:
    """The table for one configuration: its name and the IPv6 network length."""

    table: str
    ipv6_prefix: int = 64

    # -- where a target lives --------------------------------------------------

    def place(self, target: str) -> tuple[str, Any]:
        """(set name, nft value) for a target of the ban rule: "a.b.c.d", "a.b.c.0/N" or
        "v6net/N", as BanRule writes them (canonical: read by their text, no parsing, as
        a reconcile does it for every ban)."""
        addr, _, length = target.partition("/")
        if ":" not in addr:
            if not length or length == "32":
                return "ban4", addr
            return "ban4net", {"prefix": {"addr": addr, "len": int(length)}}
        bits = int(length or 128)
        if bits == self.ipv6_prefix:
            return "ban6net", addr
        if bits == 128:
            return "ban6host", addr
        return "ban6", {"prefix": {"addr": addr, "len": bits}}

    def key(self, set_name: str, value: Any) -> str:  # noqa: ANN401 - nft's JSON
        """The target a listed element stands for (what `place` made it from); an element
        nothing here would make gets a key no target has, so it counts as extra."""
        if isinstance(value, dict) and "prefix" in value:
            prefix = value["prefix"]
            return f"{canonical(str(prefix['addr']))}/{prefix['len']}"
        if not isinstance(value, str):
            return f"unknown {value!r}"
        addr = canonical(value)
        if ":" not in addr:
            return addr if set_name == "ban4" else f"{addr}/32"
        return f"{addr}/{self.ipv6_prefix if set_name == 'ban6net' else 128}"

    # -- commands --------------------------------------------------------------

    def _obj(self, **extra: Any) -> Command:  # noqa: ANN401 - JSON values
        return {"family": "inet", "table": self.table, **extra}

    def rule_comments(self, owner: Owner) -> list[str]:
        return [owner.comment(), *(f"wrapalert {n}" for n in self._match_names())]

    def _match_names(self) -> list[str]:
        return [f"{n}/{self.ipv6_prefix}" if n == "ban6net" else n for n in SETS]

    def declare(
        self, owner: Owner, recreate: Iterable[str] = (), *, chain_wrong: bool = False
    ) -> list[Command]:
        """Table, sets, chain and rules, idempotently (`add` leaves what exists; the
        chain's rules are replaced). `recreate`: sets whose declaration is wrong, deleted
        and made anew (their rules go first); `chain_wrong`: the chain too."""
        commands: list[Command] = [{"add": {"table": {"family": "inet", "name": self.table}}}]
        recreate = list(recreate)
        if recreate or chain_wrong:
            commands.append({"flush": {"chain": self._obj(name=CHAIN)}})
        if chain_wrong:
            commands.append({"delete": {"chain": self._obj(name=CHAIN)}})
        commands += [{"delete": {"set": self._obj(name=n)}} for n in recreate]
        for name, (kind, flags) in SETS.items():
            commands.append({"add": {"set": self._obj(name=name, type=kind, flags=sorted(flags))}})
        chain = self._obj(name=CHAIN, type="filter", hook="input", prio=PRIORITY, policy="accept")
        commands += [{"add": {"chain": chain}}, {"flush": {"chain": self._obj(name=CHAIN)}}]
        comments = self.rule_comments(owner)
        established = {
            "match": {
                "op": "in",
                "left": {"ct": {"key": "state"}},
                "right": ["established", "related"],
            }
        }
        rules = [[established, {"accept": None}]]
        rules += [[self._match(name), {"drop": None}] for name in SETS]
        commands += [
            {"add": {"rule": self._obj(chain=CHAIN, expr=expr, comment=comment)}}
            for expr, comment in zip(rules, comments, strict=True)
        ]
        return commands

    def _match(self, set_name: str) -> Command:
        proto = "ip" if SETS[set_name][0] == "ipv4_addr" else "ip6"
        left: Any = {"payload": {"protocol": proto, "field": "saddr"}}
        if set_name == "ban6net":
            mask = ipaddress.IPv6Network(("::", self.ipv6_prefix)).netmask
            left = {"&": [left, str(mask)]}
        return {"match": {"op": "==", "left": left, "right": f"@{set_name}"}}

    def elements(self, verb: str, set_name: str, values: list[Any]) -> Command:
        return {verb: {"element": self._obj(name=set_name, elem=values)}}

    def changes(
        self, add: Mapping[str, float] | Iterable[tuple[str, float]], delete: Iterable[str] = ()
    ) -> list[Command]:
        """Deletions, then additions, one command per set and verb. A deleted element is
        first added, so deleting one the kernel already expired does not fail the batch
        (nft 1.0.6 has no `destroy`); an added one is deleted first, so a renewed ban
        gets its new timeout (the kernel keeps an existing element's)."""
        adds = list(add.items() if isinstance(add, Mapping) else add)
        bare: dict[str, list[Any]] = {}
        timed: dict[str, list[Any]] = {}
        for target in [*delete, *(t for t, _ in adds)]:
            name, value = self.place(target)
            bare.setdefault(name, []).append(value)
        for target, seconds in adds:
            name, value = self.place(target)
            timed.setdefault(name, []).append(timed_value(value, seconds))
        commands = [self.elements("add", n, v) for n, v in bare.items()]
        commands += [self.elements("delete", n, v) for n, v in bare.items()]
        commands += [self.elements("add", n, v) for n, v in timed.items()]
        return commands

    def flush(self) -> list[Command]:
        return [{"flush": {"set": self._obj(name=n)}} for n in SETS]

    # -- reading ---------------------------------------------------------------

    def parse(self, listing: Mapping[str, Any]) -> KernelTable:
        """`nft -j list table inet NAME`'s output (a table that exists)."""
        table = KernelTable(exists=True)
        for item in listing.get("nftables", []):
            if not isinstance(item, dict):
                continue
            if (s := item.get("set")) is not None and s.get("name") in SETS:
                found = KernelSet(str(s.get("type")), frozenset(_flags(s.get("flags"))))
                for elem in s.get("elem", []):
                    inner = elem.get("elem") if isinstance(elem, dict) else None
                    value = inner.get("val") if isinstance(inner, dict) else elem
                    expires = inner.get("expires") if isinstance(inner, dict) else None
                    left = float(expires) if isinstance(expires, int | float) else None
                    found.elements[self.key(s["name"], value)] = (left, value)
                table.sets[s["name"]] = found
            elif (c := item.get("chain")) is not None and c.get("name") == CHAIN:
                table.chain = {k: c.get(k) for k in ("type", "hook", "prio", "policy")}
            elif (r := item.get("rule")) is not None and r.get("chain") == CHAIN:
                table.rules.append(str(r.get("comment", "")))
        if table.rules:
            table.owner = Owner.parse(table.rules[0])
        return table

    def diff(self, kernel: KernelTable, want: Mapping[str, float], owner: Owner) -> Drift:
        """How `kernel` differs from `want` (target -> seconds left) for `owner`. Bans
        about to expire (within SLACK) count neither way: the kernel's timeout and the
        book's clock may part by a second."""
        live = [t for t, left in want.items() if left > SLACK]
        if not kernel.exists:
            return Drift(table_missing=True, missing=tuple(sorted(live)), unenforced=len(live))
        comments = self.rule_comments(owner)
        declaration, broken = self._declaration(kernel, comments)
        placed = {target: self.place(target)[0] for target in want}
        missing, expiry = [], []
        for target, left in want.items():
            got = kernel.sets.get(placed[target])
            have = got.elements.get(target) if got is not None else None
            if have is None:
                if left > SLACK:
                    missing.append(target)
            elif have[0] is None or abs(have[0] - left) > SLACK:
                expiry.append(target)
        extra = [
            target
            for name, got in kernel.sets.items()
            for target, (left, _) in got.elements.items()
            if placed.get(target) != name and (left is None or left > SLACK)
        ]
        unenforced = set(missing) | {t for t in live if placed[t] in broken}
        return Drift(
            declaration=tuple(declaration),
            marker=kernel.rules[:1] != comments[:1],
            missing=tuple(sorted(missing)),
            extra=tuple(sorted(extra)),
            expiry=tuple(sorted(expiry)),
            unenforced=len(unenforced),
        )

    def _declaration(self, kernel: KernelTable, comments: list[str]) -> tuple[list[str], set[str]]:
        """What of the table's declaration is wrong, and the sets whose members are not
        dropped because of it."""
        declaration = []
        broken: set[str] = set()
        for name, (kind, flags) in SETS.items():
            got = kernel.sets.get(name)
            if got is None:
                declaration.append(f"set {name} missing")
            elif (got.kind, got.flags) != (kind, flags):
                declaration.append(f"set {name} declared otherwise")
                broken.add(name)
        wanted_chain = {"type": "filter", "hook": "input", "prio": PRIORITY, "policy": "accept"}
        if kernel.chain is None:
            declaration.append(f"chain {CHAIN} missing")
            broken.update(SETS)
        elif kernel.chain != wanted_chain:
            declaration.append(f"chain {CHAIN} hooked otherwise")
            broken.update(SETS)
        elif kernel.rules[1:] != comments[1:]:
            declaration.append(f"chain {CHAIN}'s rules changed")
            broken.update(SETS)
        return declaration, broken

    def repair(
        self, kernel: KernelTable, drift: Drift, want: Mapping[str, float], owner: Owner
    ) -> list[list[Command]]:
        """The transactions that make `kernel` hold `want`: the declaration first, in a
        transaction of its own when anything of it is wrong (nft 1.0.6: no elements into
        an interval set made in the same one), then the elements, CHUNK at a time."""
        transactions: list[list[Command]] = []
        recreate = [
            n for n, s in kernel.sets.items() if (s.kind, s.flags) != SETS[n] and kernel.exists
        ]
        chain_wrong = kernel.chain is not None and any(
            "hooked otherwise" in d for d in drift.declaration
        )
        if drift.table_missing or drift.declaration or drift.marker:
            transactions.append(self.declare(owner, recreate, chain_wrong=chain_wrong))
        gone = set(recreate)
        deletions: list[tuple[str, Any]] = []
        for name, got in kernel.sets.items():
            if name in gone:
                continue
            deletions += [(name, got.elements[t][1]) for t in drift.extra if t in got.elements]
            deletions += [(name, got.elements[t][1]) for t in drift.expiry if t in got.elements]
        additions = [*drift.missing, *drift.expiry]
        additions += [t for t in want if self.place(t)[0] in gone and want[t] > SLACK]
        for start in range(0, max(len(deletions), len(additions)), CHUNK):
            commands: list[Command] = []
            by_set: dict[str, list[Any]] = {}
            for name, value in deletions[start : start + CHUNK]:
                by_set.setdefault(name, []).append(value)
            commands += [self.elements("delete", n, v) for n, v in by_set.items()]
            timed: dict[str, list[Any]] = {}
            for target in dict.fromkeys(additions[start : start + CHUNK]):
                name, value = self.place(target)
                timed.setdefault(name, []).append(timed_value(value, want[target]))
            commands += [self.elements("add", n, v) for n, v in timed.items()]
            if commands:
                transactions.append(commands)
        return transactions


def canonical(addr: str) -> str:
    """An address as Python writes it. nft prints what inet_ntop writes: the same, but for
    the IPv4-embedding ranges (::ffff:1.2.3.4, ::1.2.3.4), which only then need parsing."""
    if "." in addr and ":" in addr:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv6Address(addr))
    return addr.lower()


def timed_value(value: Any, seconds: float) -> Command:  # noqa: ANN401 - nft's JSON
    """An element with its timeout (whole seconds, at least one)."""
    return {"elem": {"val": value, "timeout": max(1, round(seconds))}}


def _flags(flags: object) -> list[str]:
    if isinstance(flags, str):
        return [flags]
    return [str(f) for f in flags] if isinstance(flags, list) else []
