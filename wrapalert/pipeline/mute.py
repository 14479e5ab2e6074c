"""Muting: ignore lists from the config and silences with an expiry.

An ignored or silenced event is counted (so the totals still add up) and
never notified. Matchers are `field=value`: `client=` (or `client_addr=`)
takes an address or a network in CIDR form, every other field matches
exactly. All matchers of a silence must match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wrapalert.model import Event

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FIELDS = ("daemon", "client_addr", "client_name", "user", "server", "host", "verdict")
ALIASES = {"client": "client_addr", "addr": "client_addr", "name": "client_name"}
_CACHE_MAX = 4096  # addresses whose network membership is remembered per Mute


class MatcherError(ValueError):
    """A matcher that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Matcher:
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
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise MatcherError(f"{text!r}: not an address or network (CIDR)") from None
        return cls(name, str(network), network)

    def __str__(self) -> str:
        return f"{self.field}={self.value}"

    def matches(self, event: Event) -> bool:
        if self.network is None:
            return event.get(self.field) == self.value
        return _in_networks(event.get("client_addr"), (self.network,))


@dataclass(frozen=True)
class Silence:
    id: int
    matchers: tuple[Matcher, ...]
    created: float
    expires: float
    comment: str = ""

    def active(self, now: float) -> bool:
        return self.created <= now < self.expires


class Mute:
    """Decides, per event, whether it is ignored, silenced or goes on."""

    def __init__(self, networks: tuple[str, ...] = (), daemons: tuple[str, ...] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.daemons = frozenset(daemons)
        self.silences: list[Silence] = []
        self._in_ignored: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        """Whether anything could match (the per-event check is skipped otherwise)."""
        return bool(self.networks or self.daemons or self.silences)

    def classify(self, event: Event, now: float) -> str | None:
        """ "ignored", "silenced" or None (notify)."""
        if self.daemons and event.get("daemon") in self.daemons:
            return "ignored"
        if self.networks and self._ignored_addr(event.get("client_addr")):
            return "ignored"
        for silence in self.silences:
            if silence.active(now) and all(m.matches(event) for m in silence.matchers):
                return "silenced"
        return None

    def _ignored_addr(self, addr: str) -> bool:
        known = self._in_ignored.get(addr)
        if known is None:
            known = _in_networks(addr, self.networks)
            if len(self._in_ignored) >= _CACHE_MAX:
                self._in_ignored.clear()
            self._in_ignored[addr] = known
        return known


def _in_networks(addr: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.partition("%")[0])
    except ValueError:
        return False  # "unknown" is in no network
    return any(ip.version == n.version and ip in n for n in networks)
