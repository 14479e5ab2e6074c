"""What may be banned, and as what: the one definition the ban stage, the ban book and
the `ban` commands share.

A ban's *target* is what goes into the kernel set: an IPv4 address, or the
IPv6 network of `ipv6_prefix` bits holding the source (an IPv6 host picks a
new address in its /64 at will, so banning one address would ban nothing).
A target is never banned when it overlaps the allowlist: the configured
`allow` networks plus, always, loopback, link-local, unspecified and this
host's own addresses (read from /proc when the rule is built: at start and
at each reload).

Pure except `local_addresses`, which reads /proc; stdlib only.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never banned, whatever the config says: our own traffic and what cannot be a remote host.
ALWAYS_ALLOWED = (
    "127.0.0.0/8",
    "0.0.0.0/32",
    "169.254.0.0/16",
    "::1/128",
    "::/128",
    "fe80::/10",
    "::ffff:0:0/96",  # IPv4-mapped: the daemon normalises these to IPv4 before they get here
)
MODES = ("enforce", "dry-run")


def local_addresses(proc: Path = Path("/proc/net")) -> tuple[str, ...]:
    """This host's addresses in the current network namespace (IPv4 from fib_trie's
    local routes, IPv6 from if_inet6); empty where /proc says nothing."""
    found: list[str] = []
    try:
        lines = (proc / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for before, line in itertools.pairwise(lines):
        # "|-- 10.0.0.1" followed by "/32 host LOCAL": that address is ours.
        if "host LOCAL" in line and "|--" in before:
            found.append(before.rsplit(" ", 1)[-1])
    try:
        for line in (proc / "if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.append(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return tuple(dict.fromkeys(found))


class BanTargetError(ValueError):
    """Not an address or network that can be banned."""


@dataclass(frozen=True)
class BanRule:
    """When a source is banned, for how long, and what never is."""

    threshold: int = 10  # trusted refusals from one target within `window`
    window: float = 600.0
    ban_for: float = 3600.0
    ipv6_prefix: int = 64
    allow: tuple[str, ...] = ()  # CIDRs never banned (the ALWAYS_ALLOWED ones are added)
    max_bans: int = 10_000
    mode: str = "enforce"  # or "dry-run": decide and report, touch nothing
    scan: bool = True  # a "daemons" scan signal (one address, many daemons) bans at once
    local: tuple[str, ...] = field(default=(), compare=False)  # this host's addresses
    _nets: tuple[IPNetwork, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = [ipaddress.ip_network(n, strict=False) for n in (*ALWAYS_ALLOWED, *self.allow)]
        nets += [ipaddress.ip_network(a) for a in self.local]
        object.__setattr__(self, "_nets", tuple(nets))

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"

    def target(self, addr: str) -> str | None:
        """The set element for a client address: "a.b.c.d" or "net/prefix"; None for
        what is not an address ("unknown", a name)."""
        try:
            ip = ipaddress.ip_address(addr.partition("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False))
        return str(ip)

    def parse_target(self, text: str) -> str:
        """A target given by an operator: an address, or an IPv6 network (widened to
        `ipv6_prefix` at least). BanTargetError otherwise."""
        if "/" not in text:
            target = self.target(text)
            if target is None:
                raise BanTargetError(f"{text!r} is not an IP address")
            return target
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise BanTargetError(f"{text!r} is not an address or network") from None
        if isinstance(net, ipaddress.IPv4Network):
            if net.prefixlen != 32:
                raise BanTargetError("IPv4 bans are single addresses")
            return str(net.network_address)
        return str(net.supernet(new_prefix=min(net.prefixlen, self.ipv6_prefix)))

    def allowed(self, target: str) -> bool:
        """Whether the target overlaps the allowlist (then it is never banned)."""
        net = ipaddress.ip_network(target, strict=False)
        return any(net.version == a.version and net.overlaps(a) for a in self._nets)


def check_allow(values: Iterable[str]) -> str | None:
    """Why a configured allow list is unusable, or None."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not a network (use CIDR, e.g. 192.0.2.0/24)"
    return None


def overlapping(target: str, nets: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first of `nets` the target overlaps (either holds the other), or None."""
    net = ipaddress.ip_network(target, strict=False)
    return next((n for n in nets if n.version == net.version and net.overlaps(n)), None)
