"""The fleet: this host's bans posted to the peers of one Alertmanager cluster, and (with
`follow`) the bans other hosts posted there handed to the ban book.

Config-scoped (built by the runtime builder, daemon/runtime.py, when the
nftables sink names an alertmanager sink with `fleet`; a reload builds a new
one): the peers are that sink's (sinks/amapi.py: its URLs, basic auth and CA,
read at build). The long-lived side is the ban book's (daemon/fleetbook.py):
what to tell the fleet, and what this host keeps of the fleet's bans. One task,
two loops:

- posting: each change of the book's notices (a ban made, renewed or lifted)
  goes to every peer at once; every REPOST intervals (`follow_interval`) the
  whole set goes to every peer, as Prometheus re-sends firing alerts, because
  Alertmanager neither shares alerts between peers nor keeps them across its own
  restart. A peer that failed gets the whole set at its next try, one interval
  later (it then holds the bans it missed, and the lifts). Each POST carries at
  most POST_BATCH alerts.
- looking (`follow = true`): every interval, every peer is asked at once for
  its active WrapalertBan alerts; the union of the answers is the fleet's view
  (one live peer is enough, and a peer that restarted empty lifts nothing while
  another still holds the bans). fleetwire.py reads each answer as hostile input
  and applies `fleet_hosts`, `fleet_min_hosts` and this host's target rule; the
  book (Bans.follow) bans, refuses and lifts. When no peer answers, nothing
  changes: each fleet ban ends at its own time.

Bounded, written down: an answer is read up to fleetwire.MAX_REPLY bytes (a longer
one is that peer's failure, counted and logged); answers are parsed one at a time
beside the event loop, and so is the view made of them (a full answer, some 17,000
alerts: 6-7x a bare json.loads of it, ~40 MB at its peak; bench/fleet_reply.py); the
book takes at most FOLLOW_BATCH new fleet bans per look (bans.py). Peer failures
are logged when a peer's state changes, not at every try; an error in a round (a
bug) is logged and that round skipped, never the end of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field

import structlog

from wrapalert.banrule import BanRule
from wrapalert.clock import Clock
from wrapalert.config import Config
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.stats import Stats
from wrapalert.fleetwire import (
    BAN_ALERT,
    MAX_REPLY,
    FleetReplyError,
    Notice,
    Reading,
    ban_alerts,
    fleet_view,
    read_alerts,
)
from wrapalert.sinks.alertmanager import AlertmanagerSinkConfig
from wrapalert.sinks.amapi import Access, Peer, Peers
from wrapalert.sinks.base import SinkError
from wrapalert.sinks.nftables import NftablesSinkConfig

log = structlog.get_logger()

REPOST = 4  # follow intervals between two full posts to every peer
POST_BATCH = 1000  # alerts per POST


@dataclass(frozen=True)
class FleetSettings:
    """What the fleet's part needs of the config: the nftables sink's fleet keys and
    rule, the alertmanager sink it names."""

    sink: str  # the alertmanager sink's name
    access: Access
    static: tuple[tuple[str, str], ...]  # that sink's static labels
    rule: BanRule  # the nftables sink's: targets are made by it
    follow: bool
    interval: float
    hosts: frozenset[str] | None
    min_hosts: int

    @classmethod
    def of(cls, cfg: Config) -> FleetSettings | None:
        """From a validated config (config.py checked that `fleet` names an alertmanager
        sink); None when no nftables sink names a fleet."""
        nft = next((s for s in cfg.sinks if isinstance(s, NftablesSinkConfig)), None)
        if nft is None or nft.fleet is None:
            return None
        am = next(s for s in cfg.sinks if s.name == nft.fleet)
        assert isinstance(am, AlertmanagerSinkConfig)  # noqa: S101 - config.py checked it
        return cls(
            sink=am.name,
            access=am.access,
            static=am.labels,
            rule=nft.rule,
            follow=nft.follow,
            interval=nft.follow_interval,
            hosts=nft.fleet_hosts,
            min_hosts=nft.fleet_min_hosts,
        )


@dataclass
class PeerState:
    """What this host knows of one peer: its last post and its last answer."""

    ok: bool | None = None  # the last exchange worked (None: none yet)
    last_error: str | None = None
    posted: float | None = None  # when it last took a post
    answered: float | None = None  # when it last answered a look
    retry: float = 0.0  # clock time of the next try of a whole post (after a failure)
    whole: bool = True  # its next post carries every notice
    rejected: Counter[str] = field(default_factory=Counter)  # in its last answer


class Fleet:
    """Posts the book's notices to the peers; with `follow`, hands the peers' bans to it."""

    def __init__(
        self, settings: FleetSettings, *, bans: Bans, host: str, clock: Clock, stats: Stats
    ) -> None:
        self.settings = settings
        self.peers = Peers.connect(settings.access)  # ConfigError: the password or CA file
        self.book = bans
        self.host = host
        self.clock = clock
        self.stats = stats
        self.state = {peer.name: PeerState() for peer in self.peers.peers}
        self.looked: float | None = None  # when a look last got an answer
        self.following = 0  # bans in the last view
        self.waiting = 0  # targets fewer than fleet_min_hosts hosts banned, at the last look
        self.published = 0  # notices peers took (a whole post counts each again)
        self.task: asyncio.Task[None] | None = None
        self._parsing = asyncio.Lock()  # one answer parsed at a time: memory, not speed

    def start(self, tg: asyncio.TaskGroup) -> None:
        self.task = tg.create_task(self.run(), name="fleet")

    def retire(self) -> None:
        """Stop (a reload's successor, or shutdown, takes over)."""
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._posting(), name="fleet-post")
            if self.settings.follow:
                tg.create_task(self._looking(), name="fleet-look")

    # -- posting ----------------------------------------------------------------------

    async def _posting(self) -> None:
        next_whole = 0.0
        while True:
            try:
                next_whole = await self._post_round(next_whole)
            except Exception:  # a task boundary: the next round tries again, whole
                log.exception("fleet_post_failed")
                next_whole = 0.0
                await self.clock.sleep(self.settings.interval)

    async def _post_round(self, next_whole: float) -> float:
        """One round of posts, then the wait for a change or a due post; returns when
        the next whole post is due."""
        pages = self.book.fleet
        now = self.clock.now()
        changed = pages.take_changed()
        if now >= next_whole:
            for state in self.state.values():
                state.whole, state.retry = True, 0.0
            next_whole = now + self.settings.interval * REPOST
        whole = pages.every(now)
        async with asyncio.TaskGroup() as tg:
            for peer in self.peers.peers:
                state = self.state[peer.name]
                if state.whole and now >= state.retry:
                    tg.create_task(self._post(peer, whole, state, whole=True))
                elif changed and not state.whole:
                    tg.create_task(self._post(peer, changed, state, whole=False))
        wake = min([next_whole, *(s.retry for s in self.state.values() if s.whole)])
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout(max(0.0, wake - self.clock.now())):
                await pages.wake.wait()
        return next_whole

    async def _post(
        self, peer: Peer, notices: list[Notice], state: PeerState, *, whole: bool
    ) -> None:
        if not notices:  # nothing to tell it: a whole post of nothing is done
            state.whole = False
            return
        static = dict(self.settings.static)
        try:
            for start in range(0, len(notices), POST_BATCH):
                alerts = ban_alerts(
                    notices[start : start + POST_BATCH], host=self.host, static=static
                )
                body = json.dumps(alerts, separators=(",", ":")).encode()
                error = await self.peers.post_one(peer, body)
                if error is not None:
                    raise error
        except SinkError as exc:
            state.whole, state.retry = True, self.clock.now() + self.settings.interval
            self._failed(peer, state, f"post: {exc}")
            return
        if whole:
            state.whole = False
        state.posted = self.clock.now()
        self.published += len(notices)
        self._worked(peer, state)

    # -- looking ----------------------------------------------------------------------

    async def _looking(self) -> None:
        while True:
            try:
                await self._look_once()
            except Exception:  # a task boundary: the next look tries again
                log.exception("fleet_look_failed")
            await self.clock.sleep(self.settings.interval)

    async def _look_once(self) -> None:
        answers = await asyncio.gather(*(self._look(peer) for peer in self.peers.peers))
        readings = [reading for reading in answers if reading is not None]
        if not readings:
            return  # no peer answered: nothing changes, each fleet ban ends at its time
        settings = self.settings
        view = await asyncio.to_thread(
            fleet_view,
            [s for reading in readings for s in reading.sightings],
            settings.rule,
            me=self.host,
            hosts=settings.hosts,
            min_hosts=settings.min_hosts,
        )
        now = self.clock.now()
        self.looked, self.following, self.waiting = now, len(view.bans), view.waiting
        self.book.follow(view, now)

    async def _look(self, peer: Peer) -> Reading | None:
        """One peer's answer, read; None when it gave none that can be read."""
        state = self.state[peer.name]
        try:
            body = await self.peers.get_alerts(peer, [f'alertname="{BAN_ALERT}"'], limit=MAX_REPLY)
            # Megabytes of JSON are parsed beside the event loop, not on it, one at a time.
            async with self._parsing:
                reading = await asyncio.to_thread(read_alerts, body, self.clock.now())
        except (SinkError, FleetReplyError) as exc:
            self._failed(peer, state, f"look: {exc}")
            return None
        state.answered = self.clock.now()
        if reading.rejected:
            self.stats.fleet_rejected.update(reading.rejected)
            if reading.rejected != state.rejected:  # logged when it changes, not each look
                log.warning("fleet_alerts_rejected", peer=peer.name, **reading.rejected)
        state.rejected = reading.rejected
        self._worked(peer, state)
        return reading

    # -- peers' state -----------------------------------------------------------------

    def _failed(self, peer: Peer, state: PeerState, error: str) -> None:
        if state.ok is not False or state.last_error != error:
            log.warning("fleet_peer_failed", peer=peer.name, error=error)
        state.ok, state.last_error = False, error

    def _worked(self, peer: Peer, state: PeerState) -> None:
        if state.ok is False:
            log.info("fleet_peer_recovered", peer=peer.name)
        state.ok, state.last_error = True, None

    def status(self) -> dict[str, object]:
        """Status' `fleet`: the peers, the last look, what was posted."""
        seen = [s.ok for s in self.state.values() if s.ok is not None]
        return {
            "sink": self.settings.sink,
            "follow": self.settings.follow,
            "interval": self.settings.interval,
            # Whether a peer took the last exchange (None: none yet, e.g. nothing to post).
            "ok": any(seen) if seen else None,
            "looked": self.looked,
            "following": self.following,
            "waiting": self.waiting,
            "published": self.published,
            "rejected": dict(self.stats.fleet_rejected),
            "peers": {
                name: {
                    "ok": s.ok,
                    "last_error": s.last_error,
                    "posted": s.posted,
                    "answered": s.answered,
                }
                for name, s in self.state.items()
            },
        }
