"""nftables sink: a proven attacker's packets are dropped in the kernel.

The daemon owns one `inet` table (`table`, default "wrapalert"): a set of
IPv4 addresses and a set of IPv6 networks, both with per-element timeouts,
and one input chain at priority `filter - 10` (before the usual filter
chains) that drops their members. Nothing else in the ruleset is read or
touched. The kernel expires each ban by itself: a dead daemon never leaves
a ban for ever, and the table is left in place at stop.

Who decides: the ban stage (pipeline/ban.py) counts trusted refusals and
the ban book (daemon/bans.py) applies the rule, the cap and the state; this
module only carries decisions to the kernel, in batches, each one `nft`
transaction (all of it or nothing).

Why the `nft` command with JSON (`nft -j -f -`) and not libnftables through
python3-nftables: that binding is a thin ctypes wrapper over the same
library and the same JSON, but it lives in Debian's dist-packages, which
the daemon's virtualenv (and a pip install) cannot import; `nft` is in the
nftables package the sink needs anyway. A child process also keeps a crash
or a blocking netlink call of the library out of the event loop, and a
batch costs one fork+exec (a few ms): bans are rare, and batched.

`send_records` makes this an event sink, but the daemon gives it no events
(the stage counts them): `wrapalert test-alert` sends it its test record,
and it answers by checking that the table is there and the kernel answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrapalert.banrule import MODES, BanRule, check_allow, local_addresses
from wrapalert.confparse import KeyDocs, Table
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import EventSinkType

SET4, SET6, CHAIN = "ban4", "ban6", "input"
PRIORITY = -10  # filter - 10: before the usual filter chains, so their accepts come too late
TIMEOUT = 10.0  # seconds one nft run may take
_TABLE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class NftablesSinkConfig:
    """Bans past `threshold` trusted refusals within `window`, for `ban_for`, in the kernel."""

    name: str = "nftables"
    threshold: int = 10
    window: float = 600.0
    ban_for: float = 3600.0
    ipv6_prefix: int = 64
    allow: tuple[str, ...] = ()
    max_bans: int = 10_000
    mode: str = "enforce"
    table: str = "wrapalert"
    scan: bool = True  # a scan across daemons (one address) bans at once
    nft: str = "/usr/sbin/nft"
    # Not a key: no rate limit stands between the ban stage and its counts (pipeline/ban.py);
    # the attribute is what every event sink's config has.
    events_per_second: float | None = None

    def rule(self, local: tuple[str, ...] = ()) -> BanRule:
        return BanRule(
            threshold=self.threshold,
            window=self.window,
            ban_for=self.ban_for,
            ipv6_prefix=self.ipv6_prefix,
            allow=self.allow,
            max_bans=self.max_bans,
            mode=self.mode,
            scan=self.scan,
            local=local,
        )


def parse(t: Table) -> NftablesSinkConfig:
    d = NftablesSinkConfig
    allow = tuple(t.str_list("allow", ()))
    if problem := check_allow(allow):
        raise t.error("allow", problem)
    mode = t.get("mode", d.mode, str)
    if mode not in MODES:
        raise t.error("mode", f'{mode!r}: use "enforce" or "dry-run"')
    table = t.get("table", d.table, str)
    if not table or len(table) > 64 or not set(table) <= _TABLE_NAME:
        raise t.error("table", f"{table!r}: letters, digits and _ only (at most 64)")
    return NftablesSinkConfig(
        name=t.get("name", d.name, str),
        threshold=t.count("threshold", d.threshold, minimum=1, maximum=1_000_000),
        window=t.positive_duration("window", d.window),
        ban_for=t.positive_duration("ban_for", d.ban_for),
        ipv6_prefix=t.count("ipv6_prefix", d.ipv6_prefix, minimum=16, maximum=128),
        allow=allow,
        max_bans=t.count("max_bans", d.max_bans, minimum=1, maximum=1_000_000),
        mode=mode,
        table=table,
        scan=t.get("scan", d.scan, bool),
        nft=str(t.path("nft", Path(d.nft))),
    )


def describe(cfg: NftablesSinkConfig) -> str:
    what = "reports what it would ban" if cfg.mode == "dry-run" else "drops"
    return (
        f"nftables table inet {cfg.table}: {what} a source after {cfg.threshold} trusted "
        f"refusals within {cfg.window:g}s, for {cfg.ban_for:g}s (IPv6 by /{cfg.ipv6_prefix}), "
        f"at most {cfg.max_bans} bans"
    )


def _element(target: str, seconds: float | None = None) -> dict[str, Any] | str:
    """A set element in nft's JSON: an address, or a network as a prefix; with a timeout."""
    net = ipaddress.ip_network(target, strict=False)
    value: dict[str, Any] | str
    if net.version == 6:
        value = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    else:
        value = str(net.network_address)
    if seconds is None:
        return value
    return {"elem": {"val": value, "timeout": max(1, round(seconds))}}


def _set_of(target: str) -> str:
    return SET6 if ":" in target else SET4


class NftablesSink:
    """Carries ban decisions to the kernel: one `nft -j -f -` transaction per call."""

    def __init__(self, cfg: NftablesSinkConfig) -> None:
        self.name = cfg.name
        self.table = cfg.table
        self.nft = cfg.nft
        # This host's addresses as they are now (start or reload): never banned.
        self.rule = cfg.rule(local_addresses())

    # -- the commands, as nft JSON ----------------------------------------------

    def _obj(self, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON values
        return {"family": "inet", "table": self.table, **extra}

    def _declare(self) -> list[dict[str, Any]]:
        """Table, sets and chain, idempotently: `add` leaves what exists, the chain's rules
        are replaced (flush, then ours), so a start repairs an edited chain."""
        return [
            {"add": {"table": {"family": "inet", "name": self.table}}},
            {"add": {"set": self._obj(name=SET4, type="ipv4_addr", flags=["timeout"])}},
            {"add": {"set": self._obj(name=SET6, type="ipv6_addr", flags=["interval", "timeout"])}},
            {
                "add": {
                    "chain": self._obj(
                        name=CHAIN, type="filter", hook="input", prio=PRIORITY, policy="accept"
                    )
                }
            },
            {"flush": {"chain": self._obj(name=CHAIN)}},
            *(self._drop_rule(proto, name) for proto, name in (("ip", SET4), ("ip6", SET6))),
        ]

    def _drop_rule(self, proto: str, set_name: str) -> dict[str, Any]:
        saddr = {"payload": {"protocol": proto, "field": "saddr"}}
        match = {"match": {"op": "==", "left": saddr, "right": f"@{set_name}"}}
        return {"add": {"rule": self._obj(chain=CHAIN, expr=[match, {"drop": None}])}}

    def _elements(self, verb: str, set_name: str, elems: list[Any]) -> dict[str, Any]:
        return {verb: {"element": self._obj(name=set_name, elem=elems)}}

    def _changes(
        self, add: Iterable[tuple[str, float]], delete: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Deletions, then additions. A deleted element is first added, so deleting one the
        kernel already expired does not fail the batch (nft 1.0.6 has no `destroy`); an
        added one is deleted first, so a renewed ban gets its new timeout."""
        commands: list[dict[str, Any]] = []
        add = list(add)
        for target in [*delete, *(t for t, _ in add)]:
            elem = [_element(target)]
            commands.append(self._elements("add", _set_of(target), elem))
            commands.append(self._elements("delete", _set_of(target), elem))
        for target, seconds in add:
            commands.append(self._elements("add", _set_of(target), [_element(target, seconds)]))
        return commands

    # -- what the ban book calls ----------------------------------------------

    async def ensure(self, bans: Iterable[tuple[str, float]] | None = None) -> None:
        """Declare the table; with `bans` (target, seconds left), make the sets hold exactly
        those, in the same transaction (a restart re-synchronised from the state)."""
        commands = self._declare()
        if bans is not None:
            commands += [{"flush": {"set": self._obj(name=n)}} for n in (SET4, SET6)]
            commands += self._changes(bans, ())
        await self._run(["-j", "-f", "-"], {"nftables": commands})

    async def apply(self, add: Iterable[tuple[str, float]], delete: Iterable[str] = ()) -> None:
        """Add bans (target, seconds) and lift others, in one transaction."""
        commands = self._changes(add, delete)
        if commands:
            await self._run(["-j", "-f", "-"], {"nftables": commands})

    async def flush(self) -> None:
        """Empty both sets (the table and chain stay)."""
        commands = [{"flush": {"set": self._obj(name=n)}} for n in (SET4, SET6)]
        await self._run(["-j", "-f", "-"], {"nftables": commands})

    async def elements(self) -> dict[str, float]:
        """What the kernel holds now: target -> seconds until it expires."""
        found: dict[str, float] = {}
        for set_name in (SET4, SET6):
            out = await self._run(["-j", "list", "set", "inet", self.table, set_name], None)
            for item in json.loads(out or "{}").get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    found.update([_parse_element(elem)])
        return found

    async def send_records(self, records: list[dict[str, object]]) -> None:
        """A test alert (the only records this sink is sent): check the kernel answers and
        the table is there (in dry-run, which creates no table: that nft may read the
        ruleset). Nothing is banned: the test's address is TEST-NET-1."""
        del records
        if self.rule.dry_run:
            await self._run(["-j", "list", "tables"], None)
        else:
            await self._run(["-j", "list", "table", "inet", self.table], None)

    async def _run(self, args: list[str], payload: dict[str, Any] | None) -> str:
        if shutil.which(self.nft) is None:
            raise PermanentSinkError(f"{self.nft} not found (apt-get install nftables)")
        proc = await asyncio.create_subprocess_exec(
            self.nft,
            *args,
            stdin=asyncio.subprocess.PIPE if payload is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        data = None if payload is None else json.dumps(payload).encode()
        try:
            async with asyncio.timeout(TIMEOUT):
                out, err = await proc.communicate(data)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TransientSinkError(f"nft took more than {TIMEOUT:g}s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            text = message[0] if message else f"exit {proc.returncode}"
            if "Operation not permitted" in text:
                raise PermanentSinkError(f"nft: {text} (needs CAP_NET_ADMIN: see the drop-in)")
            raise TransientSinkError(f"nft: {text}")
        return out.decode()


def _parse_element(elem: Any) -> tuple[str, float]:  # noqa: ANN401 - nft's JSON
    """(target, seconds left) from one element of `nft -j list set`."""
    inner = elem.get("elem", {}) if isinstance(elem, dict) else {}
    value = inner.get("val", elem)
    if isinstance(value, dict) and "prefix" in value:
        target = f"{value['prefix']['addr']}/{value['prefix']['len']}"
    else:
        target = str(value)
    return target, float(inner.get("expires", 0))


KEYS: KeyDocs = {
    "name": "The sink's name in status, routes and logs; unique among the sinks.",
    "threshold": "Trusted refusals from one source within window that ban it; only "
    "those whose TCP handshake the kernel saw count (never a UDP service's).",
    "window": "The sliding window in which threshold refusals must fall.",
    "ban_for": "How long a ban lasts; the kernel expires it, so no ban outlives it.",
    "ipv6_prefix": "IPv6 sources are banned by network: this prefix length.",
    "allow": "CIDRs never banned; loopback, link-local and this host's own addresses "
    "never are either.",
    "max_bans": "Bans in force at most; past it, new bans are refused and counted.",
    "mode": '"enforce" drops in the kernel; "dry-run" reports what it would ban.',
    "table": "The inet table the daemon owns (two sets and one input chain).",
    "scan": "Whether a scan across daemons from one address bans it at once (counted "
    "from handshake-proven refusals, as threshold).",
    "nft": "The nft program that applies the changes.",
}

SINK = EventSinkType(
    name="nftables",
    config=NftablesSinkConfig,
    parse=parse,
    describe=describe,
    build=NftablesSink,
    keys=KEYS,
)
