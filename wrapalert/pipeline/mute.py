"""Muting: the `Muter` interface the mute stage asks, and the `[ignore]` lists as one.

One interface for everything that mutes (Alertmanager's notify.Muter): the
ignore lists here, the silences in daemon/silences.py (the silence book, which
the control API changes at run time). A muted event is counted (so the totals
still add up, daemon/ledger.py) and never notified.
"""

from __future__ import annotations

from typing import Protocol

from wrapalert.match import IPNetwork, in_networks
from wrapalert.model import Event

_CACHE_MAX = 4096  # addresses whose network membership is remembered per Mute


class Muter(Protocol):
    """Whether an event is muted now."""

    @property
    def active(self) -> bool:
        """Whether anything could match (the per-event check is skipped otherwise)."""
        ...

    def mutes(self, event: Event, now: float) -> bool: ...


class Mute:
    """The `[ignore]` lists: events from these networks or daemons are muted."""

    def __init__(self, networks: tuple[IPNetwork, ...] = (), daemons: tuple[str, ...] = ()) -> None:
        self.networks = networks  # [ignore], as config parsed them
        self.daemons = frozenset(daemons)
        self._in_ignored: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        return bool(self.networks or self.daemons)

    def mutes(self, event: Event, _now: float) -> bool:
        if self.daemons and event.get("daemon") in self.daemons:
            return True
        return bool(self.networks) and self._ignored_addr(event.get("client_addr"))

    def _ignored_addr(self, addr: str) -> bool:
        known = self._in_ignored.get(addr)
        if known is None:
            known = in_networks(addr, self.networks)
            if len(self._in_ignored) >= _CACHE_MAX:
                self._in_ignored.clear()
            self._in_ignored[addr] = known
        return known
