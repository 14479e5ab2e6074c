"""What may be banned, and as what: the one definition the ban stage, the ban book and
the `ban` commands share.

A ban's *target* is what goes into the kernel: an IPv4 address, or the IPv6
network of `ipv6_prefix` bits holding the source (an IPv6 host picks a new
address in its /64 at will, so banning one address would ban nothing).
Except where many unrelated clients share a prefix: an address in NAT64
(64:ff9b::/96, 64:ff9b:1::/48), Teredo (2001::/32), 6to4 (2002::/16) or the
IPv4-translated and -compatible ranges embeds one IPv4 client (or tunnel
end), and its /64 holds many; such a source is banned as its single address
(/128), and no widened network may contain one of those prefixes (with
`ipv6_prefix` below 32 the network is narrowed until it does not).

A target is never banned when it overlaps the allowlist: the configured
`allow` networks plus, always, loopback, link-local and unspecified. This
host's own addresses and the peers of logged-in sessions are checked too, but
they change while the daemon runs: shield.py reads them at each decision.

`ban add` takes what an operator types: an address (made a target as above)
or a network. Wider than one IPv4 address, wider than `ipv6_prefix`, or any
network of a shared prefix but a single address, needs `force`.

Pure, stdlib only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

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
# IPv6 prefixes whose addresses stand for many unrelated clients: each address embeds an
# IPv4 client or tunnel end, so a network of them would ban everyone behind the gateway.
SHARED_PREFIXES: dict[ipaddress.IPv6Network, str] = {
    ipaddress.IPv6Network("64:ff9b::/96"): "NAT64",
    ipaddress.IPv6Network("64:ff9b:1::/48"): "NAT64 (local use)",
    ipaddress.IPv6Network("2001::/32"): "Teredo",
    ipaddress.IPv6Network("2002::/16"): "6to4",
    ipaddress.IPv6Network("::ffff:0:0:0/96"): "IPv4-translated",
    ipaddress.IPv6Network("::/96"): "IPv4-compatible",
}
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ALWAYS = tuple(ipaddress.ip_network(n) for n in ALWAYS_ALLOWED)
MODES = ("enforce", "dry-run")


class BanTargetError(ValueError):
    """Not an address or network that can be banned (the text says why and what to do)."""


def shared_prefix(net: IPNetwork) -> ipaddress.IPv6Network | None:
    """The shared prefix `net` lies in, or None."""
    if isinstance(net, ipaddress.IPv4Network):
        return None
    return next((p for p in SHARED_PREFIXES if net.subnet_of(p)), None)


def _narrowed(ip: ipaddress.IPv6Address, prefixlen: int) -> ipaddress.IPv6Network:
    """The network of `prefixlen` bits holding `ip`, made longer until it contains no
    shared prefix (only an `ipv6_prefix` below 32 can reach one from outside it)."""
    net = ipaddress.IPv6Network((ip, prefixlen), strict=False)
    while net.prefixlen < 128 and any(p.subnet_of(net) for p in SHARED_PREFIXES):
        net = ipaddress.IPv6Network((ip, net.prefixlen + 1), strict=False)
    return net


def unmapped(net: IPNetwork) -> IPNetwork:
    """An IPv4-mapped network (`::ffff:a.b.c.d/104`) as the IPv4 network it means."""
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(MAPPED):
        low = int(net.network_address) & 0xFFFF_FFFF
        return ipaddress.IPv4Network((low, net.prefixlen - 96))
    return net


def normalise_allow(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The `allow` list as networks the rule compares with: IPv4-mapped entries become
    IPv4 (`::ffff:192.0.2.7` is how sshd and `ss` print a dual-stack peer, which
    reaches the ban rule as 192.0.2.7), host bits and zones dropped, duplicates
    removed. ValueError, saying how to write it, for what is not a network."""
    found: list[IPNetwork] = []
    for value in values:
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network (use CIDR, e.g. 192.0.2.0/24)") from None
        if isinstance(net, ipaddress.IPv6Network):
            net = ipaddress.IPv6Network((net.network_address.packed, net.prefixlen))  # no zone
            if 0 < net.prefixlen < 96 and MAPPED.subnet_of(net):
                raise ValueError(
                    f"{value!r} mixes IPv4-mapped addresses with IPv6 ones: write the IPv4 "
                    "part as IPv4 (e.g. 192.0.2.0/24) and the IPv6 part on its own"
                )
        found.append(unmapped(net))
    return tuple(dict.fromkeys(found))


def overlapping(target: str, nets: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first of `nets` the target overlaps (either holds the other), or None."""
    net = ipaddress.ip_network(target, strict=False)
    return next((n for n in nets if n.version == net.version and net.overlaps(n)), None)


@dataclass(frozen=True)
class BanRule:
    """When a source is banned, for how long, and what never is."""

    threshold: int = 10  # trusted refusals from one target within `window`
    window: float = 600.0
    ban_for: float = 3600.0
    ipv6_prefix: int = 64
    allow: tuple[IPNetwork, ...] = ()  # never banned, as normalise_allow gives them
    # (the ALWAYS_ALLOWED ones are added)
    max_bans: int = 10_000
    mode: str = "enforce"  # or "dry-run": decide and report, touch nothing
    scan: bool = True  # a "daemons" scan signal (one address, many daemons) bans at once
    follow: bool = False  # bans other hosts made are followed (the fleet, daemon/fleet.py)
    _nets: tuple[IPNetwork, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nets", (*_ALWAYS, *self.allow))

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"

    def target(self, addr: str) -> str | None:
        """The target for a client address: "a.b.c.d", "net/prefix", or "addr/128" in a
        shared prefix; None for what is not an address ("unknown", a name)."""
        try:
            ip = ipaddress.ip_address(addr.partition("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv4Address):
            return str(ip)
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(self._widened(ipaddress.IPv6Network(ip)))

    def _widened(self, net: ipaddress.IPv6Network) -> ipaddress.IPv6Network:
        """A network no wider than it must be: `ipv6_prefix` bits, a single address in a
        shared prefix, never holding a shared prefix."""
        if shared_prefix(net) is not None:
            return net if net.prefixlen == 128 else ipaddress.IPv6Network(net.network_address)
        return _narrowed(net.network_address, min(net.prefixlen, self.ipv6_prefix))

    def parse_target(self, text: str, *, force: bool = False) -> str:
        """A target given by an operator: an address, or a network (an IPv6 one narrower
        than `ipv6_prefix` is widened to it). Wider ones need `force`. BanTargetError
        otherwise, saying why and what to write."""
        if "/" not in text:
            target = self.target(text)
            if target is None:
                raise BanTargetError(f"{text!r} is not an IP address")
            return target
        try:
            net = unmapped(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise BanTargetError(f"{text!r} is not an address or network") from None
        if isinstance(net, ipaddress.IPv4Network):
            if net.prefixlen == 32:
                return str(net.network_address)
            if not force:
                raise BanTargetError(
                    f"{net} is a network: IPv4 bans are single addresses "
                    "(--force bans the whole network)"
                )
            return str(net)
        return str(self._operator_network(net, force=force))

    def _operator_network(
        self, net: ipaddress.IPv6Network, *, force: bool
    ) -> ipaddress.IPv6Network:
        net = ipaddress.IPv6Network((net.network_address.packed, net.prefixlen))  # no zone
        shared = shared_prefix(net)
        if shared is not None and net.prefixlen < 128:
            if not force:
                raise BanTargetError(
                    f"{net} lies in {SHARED_PREFIXES[shared]} {shared}, whose addresses stand "
                    "for many clients: ban single addresses there (--force bans the network)"
                )
            return net
        if net.prefixlen < self.ipv6_prefix:
            if not force:
                raise BanTargetError(
                    f"{net} is wider than ipv6_prefix (/{self.ipv6_prefix}): "
                    "--force bans the whole network"
                )
            return net
        return self._widened(net)

    def allowed(self, target: str) -> bool:
        """Whether the target overlaps the allowlist (then it is never banned)."""
        return overlapping(target, self._nets) is not None
