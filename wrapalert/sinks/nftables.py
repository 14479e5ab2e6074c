"""nftables sink: a proven attacker's new connections are dropped in the kernel.

The daemon owns one `inet` table (`table`, default "wrapalert"): hash sets
of IPv4 addresses, of IPv6 networks (`ipv6_prefix`) and of single IPv6
addresses, interval sets for the rare wider networks, each element with its
own timeout, and one input chain at priority `filter - 10` (before the usual
filter chains) that lets established traffic pass and drops the sets'
members (bantable.py has the layout and why). Nothing else in the ruleset is
read or touched. The kernel expires each ban by itself: a dead daemon never
leaves a ban for ever, and the table is left in place at stop.

Who decides: the ban stage (pipeline/ban.py) counts trusted refusals and
the ban book (daemon/bans.py) applies the rule, the cap and the state; the
kernel side (daemon/bankernel.py) keeps this table equal to the book; this
module only runs `nft`: a transaction per call (all of it or nothing), and
the table's listing.

Why the `nft` command with JSON (`nft -j -f -`) and not libnftables through
python3-nftables: that binding is a thin ctypes wrapper over the same
library and the same JSON, but it lives in Debian's dist-packages, which
the daemon's virtualenv (and a pip install) cannot import; `nft` is in the
nftables package the sink needs anyway. A child process also keeps a crash
or a blocking netlink call of the library out of the event loop, and a
batch costs one fork+exec (a few ms): bans are rare, and batched.

The fleet (daemon/fleet.py): with `fleet` naming an alertmanager sink, every
ban this host makes is published to that sink's peers as a WrapalertBan alert;
with `follow`, the bans other hosts published there are followed here, each
passing this host's own rules first.

`send_records` makes this an event sink, but the daemon gives it no events
(the stage counts them), and `wrapalert test-alert` asks the ban book, which
compares the kernel with its bans.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wrapalert.banrule import MODES, BanRule, IPNetwork, normalise_allow
from wrapalert.bantable import Command, KernelTable, Layout
from wrapalert.confkeys import (
    POSITIVE,
    Choice,
    Count,
    Duration,
    Flag,
    PathValue,
    Strings,
    Text,
    setting,
    sink_name,
)
from wrapalert.confparse import HOSTNAME, Table
from wrapalert.sinks.base import Capabilities, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import EventSinkType

TIMEOUT = 10.0  # seconds one nft run may take (bench: a 100,000-ban re-sync takes ~1.5 s)
# Bans in force at most: a re-sync of this many (after a reboot) and a reconcile's listing
# stay within TIMEOUT with a margin of 4x and more (bench/results/nft_cost.md).
MAX_BANS_LIMIT = 100_000
DROP_IN = "/etc/systemd/system/wrapalert.service.d/nftables.conf"
DROP_IN_SOURCE = "/usr/share/doc/wrapalert/examples/wrapalert-nftables.conf"
# What nft says when the service may not change the firewall: no CAP_NET_ADMIN (in the
# host's user namespace), or no AF_NETLINK socket (RestrictAddressFamilies).
NOT_PERMITTED = ("Operation not permitted", "Address family not supported", "Permission denied")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_FLEET_HOSTS = 10_000


def _fleet_hosts(names: tuple[str, ...]) -> frozenset[str] | None:
    if not names:
        raise ValueError("empty: name at least one host, or leave it out for every host")
    if len(names) > MAX_FLEET_HOSTS:
        raise ValueError(f"more than {MAX_FLEET_HOSTS:,} hosts")
    for name in names:
        if not HOSTNAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name ([daemon] hostname's letters)")
    return frozenset(names)


@dataclass(frozen=True)
class NftablesSinkConfig:
    """Bans past `threshold` trusted refusals within `window`, for `ban_for`, in the kernel."""

    name: str = sink_name("nftables")
    threshold: int = setting(
        10,
        "Trusted refusals from one source within window that ban it; only "
        "those whose TCP handshake the kernel saw count (never a UDP service's).",
        Count(minimum=1, maximum=1_000_000),
    )
    window: float = setting(
        600.0, "The sliding window in which threshold refusals must fall.", POSITIVE
    )
    ban_for: float = setting(
        3600.0, "How long a ban lasts; the kernel expires it, so no ban outlives it.", POSITIVE
    )
    ipv6_prefix: int = setting(
        64,
        "IPv6 sources are banned by network: this prefix length. Sources in "
        "NAT64 (64:ff9b::/96, 64:ff9b:1::/48), Teredo (2001::/32) and 6to4 (2002::/16), whose "
        "networks hold many unrelated clients, are banned as their single address.",
        Count(minimum=16, maximum=128),
    )
    allow: tuple[IPNetwork, ...] = setting(
        (),
        "CIDRs never banned (IPv4-mapped ones, ::ffff:a.b.c.d, are read as IPv4); "
        "loopback, link-local, this host's own addresses and the peers of logged-in sessions "
        "(logind, utmp) never are either, read afresh at each decision.",
        Strings(),
        check=normalise_allow,
    )
    max_bans: int = setting(
        10_000,
        f"Bans in force at most (1 to {MAX_BANS_LIMIT:,}: a re-sync of that many "
        f"takes ~1.5 s of nft's {TIMEOUT:g}s); past it, new bans are refused and counted.",
        Count(
            minimum=1,
            maximum=MAX_BANS_LIMIT,
            why=f"more would not re-sync within nft's {TIMEOUT:g}s with a margin "
            "(README, Banning in the kernel)",
        ),
    )
    mode: str = setting(
        "enforce",
        '"enforce" drops in the kernel; "dry-run" reports what it would ban.',
        Choice(MODES),
    )
    table: str = setting(
        "wrapalert",
        "The inet table the daemon owns (its sets and one input chain); a table used "
        "before is removed once this one holds the bans, and a table another running wrapalert "
        "keeps is refused.",
        Text(_TABLE_NAME, "letters, digits and _ only (at most 64)"),
    )
    scan: bool = setting(
        True,
        "Whether a scan across daemons from one address bans it at once (counted "
        "from handshake-proven refusals, as threshold).",
        Flag(),
    )
    reconcile: float = setting(
        30.0,
        "How often the kernel's table is compared with the bans and repaired "
        "(a flushed ruleset, a deleted table, a missing or extra element); also after every "
        "failed change.",
        POSITIVE,
    )
    nft: str = setting(
        "/usr/sbin/nft", "The nft program that applies the changes.", PathValue(), check=str
    )
    fleet: str | None = setting(
        None,
        "The alertmanager sink (by name) whose peers share bans: every ban this host makes "
        "(threshold, scan, by hand) is posted there as a WrapalertBan alert until it ends, "
        "and resolved when lifted.",
        Text(),
    )
    follow: bool = setting(
        False,
        "Whether to ban what other hosts banned (read from fleet's peers), each source "
        "passing this host's own rules first (allow, own addresses, sessions, ipv6_prefix, "
        "max_bans: fleet bans take at most half of it); lifted when the fleet lifts it.",
        Flag(),
    )
    follow_interval: float = setting(
        15.0,
        "How often the peers are asked for the fleet's bans; this host's bans are posted "
        "again to every peer every four intervals (a peer that restarted catches up).",
        Duration(minimum=1.0),
    )
    fleet_hosts: frozenset[str] | None = setting(
        None,
        "Only bans from these host names ([daemon] hostname of theirs) are followed.",
        Strings(),
        check=_fleet_hosts,
        shown="every host",
    )
    fleet_min_hosts: int = setting(
        1,
        "A source is followed once this many hosts banned it (2 or more: one host's "
        "credentials alone cannot ban here).",
        Count(minimum=1, maximum=MAX_FLEET_HOSTS),
    )
    # Not a key: no rate limit stands between the ban stage and its counts (pipeline/ban.py);
    # the attribute is what every event sink's config has.
    events_per_second: float | None = None

    @property
    def rule(self) -> BanRule:
        return BanRule(
            threshold=self.threshold,
            window=self.window,
            ban_for=self.ban_for,
            ipv6_prefix=self.ipv6_prefix,
            allow=self.allow,
            max_bans=self.max_bans,
            mode=self.mode,
            scan=self.scan,
            follow=self.follow,
        )


def check(t: Table, cfg: NftablesSinkConfig) -> None:
    """Rules across the keys: following needs a fleet, the fleet keys need following."""
    if cfg.follow and cfg.fleet is None:
        raise t.error("follow", 'needs fleet = "<the alertmanager sink\'s name>" to follow')
    if not cfg.follow:
        for key in ("fleet_hosts", "fleet_min_hosts"):
            if key in t.raw:
                raise t.error(key, "only means something with follow = true")
    if cfg.fleet_hosts is not None and cfg.fleet_min_hosts > len(cfg.fleet_hosts):
        raise t.error(
            "fleet_min_hosts",
            f"{cfg.fleet_min_hosts} is more than the {len(cfg.fleet_hosts)} fleet_hosts: "
            "nothing could ever be followed",
        )


def describe(cfg: NftablesSinkConfig) -> str:
    what = "reports what it would ban" if cfg.mode == "dry-run" else "drops new connections of"
    allow = f"; never bans {', '.join(map(str, cfg.allow))}" if cfg.allow else ""
    fleet = ""
    if cfg.fleet is not None:
        fleet = f"; publishes its bans to sink {cfg.fleet}'s peers"
        if cfg.follow:
            hosts = (
                "any other host" if cfg.fleet_hosts is None else ", ".join(sorted(cfg.fleet_hosts))
            )
            fleet += (
                f" and follows theirs every {cfg.follow_interval:g}s (from {hosts}; "
                f"{cfg.fleet_min_hosts} host(s) at least)"
            )
    return (
        f"nftables table inet {cfg.table}: {what} a source after {cfg.threshold} trusted "
        f"refusals within {cfg.window:g}s, for {cfg.ban_for:g}s (IPv6 by /{cfg.ipv6_prefix}), "
        f"at most {cfg.max_bans} bans, checked every {cfg.reconcile:g}s{allow}{fleet}"
    )


class NftablesSink:
    """Runs nft for the ban book: transactions, and the table's listing."""

    def __init__(self, cfg: NftablesSinkConfig) -> None:
        self.name = cfg.name
        self.table = cfg.table
        self.nft = cfg.nft
        self.rule = cfg.rule
        self.reconcile = cfg.reconcile
        self.layout = Layout(cfg.table, cfg.ipv6_prefix)

    # -- what the ban book calls ----------------------------------------------

    async def read(self, table: str | None = None) -> KernelTable:
        """What the kernel holds in our table (or in `table`, an earlier one of ours)."""
        name = table or self.table
        out = await self._run(["-j", "list", "table", "inet", name], None, absent_ok=True)
        if out is None:
            return KernelTable(exists=False)
        # 100,000 bans are megabytes of JSON: parsed beside the event loop, not on it.
        layout = Layout(name, self.layout.ipv6_prefix)
        return await asyncio.to_thread(lambda: layout.parse(json.loads(out or "{}")))

    async def transaction(self, commands: list[Command]) -> None:
        """One nft transaction: all of it or nothing."""
        if commands:
            await self._run(["-j", "-f", "-"], {"nftables": commands})

    async def apply(self, add: Mapping[str, float], delete: Iterable[str] = ()) -> None:
        """Add bans (target -> seconds) and lift others, in one transaction."""
        await self.transaction(self.layout.changes(add, delete))

    async def flush(self) -> None:
        """Empty every ban set (the table and chain stay)."""
        await self.transaction(self.layout.flush())

    async def drop_table(self, table: str) -> None:
        """Delete one of our earlier tables (`table` changed)."""
        await self.transaction([{"delete": {"table": {"family": "inet", "name": table}}}])

    async def send_records(self, records: list[dict[str, object]]) -> None:
        """Check that the kernel answers and the table is there (the ban book's test alert
        compares its bans too). Nothing is banned."""
        del records
        if self.rule.dry_run:
            await self._run(["-j", "list", "tables"], None)
        elif (await self.read()).exists is False:
            raise TransientSinkError(f"table inet {self.table} is missing")

    async def _run(
        self, args: list[str], payload: dict[str, Any] | None, *, absent_ok: bool = False
    ) -> str | None:
        """nft's output; None for a missing object when `absent_ok`."""
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
            text = nft_error(err.decode(errors="replace"), proc.returncode)
            if absent_ok and "No such file or directory" in text:
                return None
            if any(p in text for p in NOT_PERMITTED):
                raise PermanentSinkError(not_permitted(text))
            raise TransientSinkError(f"nft: {text}")
        return out.decode()


def nft_error(stderr: str, returncode: int | None) -> str:
    """The line of nft's stderr that says what went wrong (it also echoes the command and
    underlines it, and may first print which file of its source failed)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "Error:" in line or any(p in line for p in NOT_PERMITTED):
            return line.split("Error: ", 1)[-1] if "Error: " in line else line
    return lines[0] if lines else f"exit {returncode}"


def not_permitted(text: str) -> str:
    """nft's refusal, with what the packaged service needs: the drop-in."""
    return (
        f"nft: {text}: the service may not change the firewall (it needs CAP_NET_ADMIN): "
        f"install the drop-in, cp {DROP_IN_SOURCE} {DROP_IN}, then "
        "systemctl daemon-reload && systemctl restart wrapalert"
    )


SINK = EventSinkType(
    name="nftables",
    config=NftablesSinkConfig,
    describe=describe,
    build=NftablesSink,
    check=check,
    takes=Capabilities(bans=True),  # no events: the ban stage counts them, the book calls it
)
