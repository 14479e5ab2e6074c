"""The match language and the names it speaks of: one definition for config and pipeline.

Matchers are `field=value`: `client=` (or `client_addr=`, `addr=`) takes an
address or a network in CIDR form, every other field matches exactly. A
silence is a list of matchers; a route's `match` list may also hold
`trust=trusted` or `trust=untrusted`. All of them must match. The fields a
matcher may name are the fields `[digest] group_by` may name, and
severities are listed here with their order.

Pure and stdlib only: config validates with it, the pipeline runs it, and
neither imports the other for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Event fields a matcher or `group_by` may name (the wire's long names).
FIELDS = ("daemon", "client_addr", "client_name", "user", "server", "host", "verdict")
ALIASES = {"client": "client_addr", "addr": "client_addr", "name": "client_name"}
TRUST = ("trusted", "untrusted")

SEVERITIES = ("info", "warning", "critical")  # lowest first: the order is the rank
DEFAULT_SEVERITY = "warning"  # a group no route names
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


class Fields(Protocol):
    """What a matcher reads of an event (model.Event is one)."""

    @property
    def trusted(self) -> bool: ...

    def get(self, name: str) -> str: ...


class MatcherError(ValueError):
    """A matcher that cannot be used; the message says which and why."""


def severity_rank(severity: str) -> int:
    """0 for the lowest severity; ValueError for a name that is not one."""
    try:
        return _RANK[severity]
    except KeyError:
        raise ValueError(f"unknown severity {severity!r}; use {', '.join(SEVERITIES)}") from None


def highest(severities: Iterable[str], default: str = SEVERITIES[0]) -> str:
    """The most severe of `severities`, `default` when there are none."""
    return max(severities, key=severity_rank, default=default)


def parse_network(text: str) -> IPNetwork:
    """An address or a CIDR network (host bits allowed); ValueError otherwise."""
    return ipaddress.ip_network(text, strict=False)


def in_networks(addr: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether `addr` (canonical text, maybe with a zone id) lies in one of `networks`."""
    try:
        ip = ipaddress.ip_address(addr.partition("%")[0])
    except ValueError:
        return False  # "unknown" is in no network
    return any(ip.version == n.version and ip in n for n in networks)


@dataclass(frozen=True)
class Matcher:
    """One `field=value`: exact, or network membership for the client address."""

    field: str
    value: str
    network: IPNetwork | None = None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        name, sep, value = text.partition("=")
        name = ALIASES.get(name.strip(), name.strip())
        if not sep or not value:
            raise MatcherError(f"{text!r}: write field=value, e.g. daemon=sshd")
        if name not in FIELDS:
            raise MatcherError(f"{text!r}: unknown field; use client, {', '.join(FIELDS)}")
        if name != "client_addr":
            return cls(name, value)
        try:
            network = parse_network(value)
        except ValueError:
            raise MatcherError(f"{text!r}: not an address or network (CIDR)") from None
        return cls(name, str(network), network)

    def __str__(self) -> str:
        return f"{self.field}={self.value}"

    def matches(self, event: Fields) -> bool:
        if self.network is None:
            return event.get(self.field) == self.value
        return in_networks(event.get("client_addr"), (self.network,))


@dataclass(frozen=True)
class Selector:
    """A route's `match` list: matchers, all of which must match, and the sender's trust."""

    matchers: tuple[Matcher, ...] = ()
    trust: bool | None = None  # None: trusted and untrusted senders alike

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selector:
        """Every text is `trust=trusted|untrusted` or a matcher; MatcherError names the bad one."""
        trust: bool | None = None
        matchers = []
        for text in texts:
            name, _, value = text.partition("=")
            if name.strip() != "trust":
                matchers.append(Matcher.parse(text))
            elif value in TRUST:
                trust = value == "trusted"
            else:
                raise MatcherError(f"{text!r}: use trust=trusted or trust=untrusted")
        return cls(tuple(matchers), trust)

    def matches(self, event: Fields) -> bool:
        if self.trust is not None and event.trusted is not self.trust:
            return False
        return all(m.matches(event) for m in self.matchers)
