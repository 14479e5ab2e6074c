"""The silence book: the operator's silences (`wrapalert silence add|list|expire`),
durable in the state database and live for the mute stage, which asks the book as a
`Muter` (pipeline/mute.py).

A silence is a list of matchers (wrapalert.match), all of which must match, a
comment and an expiry. Each is written to the state database at once (it is an
operator's explicit request); while the state is unavailable a silence lives in
memory until the next restart (a negative id, `durable` False). A reload builds
a new pipeline around the same book: nothing is copied.

The book also counts the events it silenced since the last digest, which the
digest says (`take_silenced`). Expired silences leave the live list at their
expiry, so the per-event check costs nothing once none is active.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher, MatcherError
from wrapalert.model import Event

log = structlog.get_logger()

MAX_SILENCE = 366 * 86400.0  # seconds
MAX_COMMENT = 500  # characters kept of a silence's comment


class SilenceError(ValueError):
    """A silence request the book refuses (the text says why)."""


@dataclass(frozen=True)
class Silence:
    id: int
    matchers: tuple[Matcher, ...]
    created: float
    expires: float
    comment: str = ""
    durable: bool = True  # in the state database (False: in memory until the restart)

    def active(self, now: float) -> bool:
        return self.created <= now < self.expires

    def matches(self, event: Event) -> bool:
        return all(m.matches(event) for m in self.matchers)


class Silences:
    """Owns the silences: added, listed, expired; asked per event by the mute stage."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.live: list[Silence] = []
        self.silenced = 0  # events silenced since the last digest
        self._next_expiry = float("inf")
        self._memory_ids = 0

    # -- the Muter -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self.live)

    def mutes(self, event: Event, now: float) -> bool:
        if now >= self._next_expiry:
            self._prune(now)
        for silence in self.live:
            if silence.active(now) and silence.matches(event):
                self.silenced += 1
                return True
        return False

    def take_silenced(self) -> int:
        """Events silenced since the last call (one digest's worth)."""
        count, self.silenced = self.silenced, 0
        return count

    # -- the book ------------------------------------------------------------------------

    def load(self) -> None:
        """The silences still active in the state database (at start)."""
        self.live = []
        for row in self.store.silences(self.clock.now()):
            try:
                matchers = tuple(Matcher.parse(m) for m in row.matchers)
            except MatcherError as exc:  # saved by an older version, or damaged
                log.error("silence_unreadable", id=row.id, error=str(exc))
                continue
            self.live.append(Silence(row.id, matchers, row.created, row.expires, row.comment))
        self._next_expiry = min((s.expires for s in self.live), default=float("inf"))

    def add(self, matchers: tuple[Matcher, ...], seconds: float, comment: str = "") -> Silence:
        """A new silence of `seconds` from now (SilenceError: none of that length)."""
        if not matchers:
            raise SilenceError("a silence needs at least one field=value matcher")
        if not 0 < seconds <= MAX_SILENCE:
            raise SilenceError("a silence needs a duration of up to a year")
        now = self.clock.now()
        comment = comment[:MAX_COMMENT]
        texts = [str(m) for m in matchers]
        silence_id = self.store.add_silence(texts, now, now + seconds, comment)
        durable = silence_id is not None
        if silence_id is None:  # state unavailable: the silence lives until restart
            self._memory_ids -= 1
            silence_id = self._memory_ids
        silence = Silence(silence_id, matchers, now, now + seconds, comment, durable)
        self.live.append(silence)
        self._next_expiry = min(self._next_expiry, silence.expires)
        log.info("silence_added", id=silence_id, matchers=texts, seconds=seconds, durable=durable)
        return silence

    def in_force(self) -> list[Silence]:
        """The silences active now, oldest first."""
        now = self.clock.now()
        return [s for s in self.live if s.active(now)]

    def expire(self, silence_id: int) -> Silence:
        """End an active silence now (SilenceError: no active silence has that id)."""
        now = self.clock.now()
        found = [s for s in self.live if s.id == silence_id and s.active(now)]
        if not found:
            raise SilenceError(f"no active silence with id {silence_id!r}")
        self.store.expire_silence(silence_id, now)
        self.live = [s for s in self.live if s.id != silence_id]
        log.info("silence_expired", id=silence_id)
        return found[0]

    def _prune(self, now: float) -> None:
        self.live = [s for s in self.live if s.expires > now]
        self._next_expiry = min((s.expires for s in self.live), default=float("inf"))
