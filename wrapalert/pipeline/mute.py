"""Muting: ignore lists from the config and silences with an expiry.

An ignored or silenced event is counted (so the totals still add up) and
never notified. A silence is a list of matchers (the match language of
wrapalert.match), all of which must match.
"""

from __future__ import annotations

from dataclasses import dataclass

from wrapalert.match import IPNetwork, Matcher, in_networks
from wrapalert.model import Event

_CACHE_MAX = 4096  # addresses whose network membership is remembered per Mute


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

    def __init__(self, networks: tuple[IPNetwork, ...] = (), daemons: tuple[str, ...] = ()) -> None:
        self.networks = networks  # [ignore], as config parsed them
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
            known = in_networks(addr, self.networks)
            if len(self._in_ignored) >= _CACHE_MAX:
                self._in_ignored.clear()
            self._in_ignored[addr] = known
        return known
