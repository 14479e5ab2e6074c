"""The daemon's books: its counters, the refusals already counted (daemon/twins.py), who
reported them (daemon/activity.py), what it saw of each recent source
(daemon/sightings.py, for explain), and every change the state database must learn.

Group changes (`groups`: every aggregator writes into this one, a reload's too),
counters, outbox entries and delivery results are staged here and written in
one transaction by `commit`: every `commit_interval` (group commit), early when
a flood fills the window (COMMIT_EVERY datagrams: `accepted`), at once when a
digest is queued or delivered, and before a reload hands state over. `load`
reads back what the last run left, in the shapes the parts restore from; `close`
saves the sightings too (a clean stop only: see sightings.py for why).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.activity import SAVE_EVERY, Activity
from wrapalert.daemon.sightings import Sightings
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Snapshot, Store
from wrapalert.daemon.twins import Twins
from wrapalert.logs import LogLimit
from wrapalert.model import Digest
from wrapalert.pipeline.aggregate import Changes
from wrapalert.pipeline.deliver import WorkerState
from wrapalert.scanrule import ScanSignal
from wrapalert.sinks.base import TransientSinkError

log = structlog.get_logger()

DeliveryHook = Callable[[str, Digest, Exception | None], None]
HOUR = 3600.0
COMMIT_EVERY = 10_000  # datagrams: commit early when a flood fills the window faster


class Ledger:
    """Owns the Stats and the staging of state; `run` is the committer task."""

    def __init__(self, store: Store, clock: Clock, on_delivery: DeliveryHook | None = None) -> None:
        self.store = store
        self.clock = clock
        self.on_delivery = on_delivery
        self.stats = Stats()
        self.groups = Changes()  # the groups changed since the last commit, any aggregator's
        self.twins = Twins()  # refusals seen, whose hook's second copy is dropped (intake)
        self.sightings = Sightings(clock.now())  # each recent source, for explain
        self.activity = Activity()  # trusted refusals per daemon and day (intake counts)
        self._activity_saved = float("-inf")
        self.since_commit = 0  # events accepted since: a flood commits early
        self._saved_counters = ""
        self._scan_log = LogLimit(now=clock.now)

    def load(self, sinks: Iterable[str]) -> tuple[Snapshot, dict[str, WorkerState]]:
        """The last run's state, and each digest sink's outbox and cap as a WorkerState."""
        snap = self.store.load()
        self.stats.restore(snap.counters)
        self.twins.restore(self.store.twins(), self.clock.now())
        saved = self.store.sightings()
        if saved is not None and not self.sightings.restore(saved):
            log.warning("sightings_unreadable", note="explain starts with no memory of sources")
        self.activity.restore(self.store.value("activity"))
        self._saved_counters = json.dumps(self.stats.to_dict(), sort_keys=True)
        states: dict[str, WorkerState] = defaultdict(WorkerState)
        for name in sinks:
            # The cap counts mails sent before a restart too: a restart loop cannot reset it.
            states[name].sent = self.store.deliveries_since(name, self.clock.now() - HOUR)
        for row in snap.outbox:
            state = states[row.sink]
            if row.failed_error is None:
                state.queue.append(row.digest)
            else:
                state.failed.append(row.digest)
                state.last_error = row.failed_error
        return snap, dict(states)

    def commit(self, *, final: bool = False) -> bool:
        """Stage what changed since the last commit and write it in one transaction
        (`final`: at shutdown, the activity too, however recently it was saved)."""
        store = self.store
        for key, state in self.groups.take():
            store.stage_group(key, state)
        if self.twins.dirty:  # in the same transaction as the events they belong to
            store.stage_twins(self.twins.saved(self.clock.now()))
        now = self.clock.now()
        if self.activity.dirty and (final or now - self._activity_saved >= SAVE_EVERY):
            store.stage_value("activity", self.activity.save())
            self._activity_saved = now
        counters = json.dumps(self.stats.to_dict(), sort_keys=True)
        if counters != self._saved_counters:
            store.stage_counters(self.stats.to_dict())
            self._saved_counters = counters
        self.since_commit = 0
        return store.commit()

    def close(self) -> bool:
        """The last commit, at a clean stop: what `commit(final=True)` writes (the activity
        too), and the sightings."""
        self.store.stage_sightings(self.sightings.export())
        return self.commit(final=True)

    def accepted(self, datagrams: int) -> None:
        """Datagrams intake read: past COMMIT_EVERY since the last commit, commit now (a
        flood must not stage more than that between two commits)."""
        self.since_commit += datagrams
        if self.since_commit >= COMMIT_EVERY:
            self.commit()

    async def run(self, interval: float) -> None:
        interval = max(interval, 0.01)  # "0" must not spin
        pruned = self.clock.now()
        while True:
            await self.clock.sleep(interval)
            self.commit()
            if self.clock.now() - pruned > HOUR:
                self.store.prune()
                pruned = self.clock.now()

    # -- hooks the pipeline calls ------------------------------------------------

    def muted(self, why: str) -> None:
        """An event stopped by [ignore] ("ignored") or a silence ("silenced")."""
        if why == "ignored":
            self.stats.ignored += 1
        else:
            self.stats.silenced += 1

    def scan_found(self, found: ScanSignal) -> None:
        self.stats.scans += 1
        self.sightings.scan(found)
        allowed, suppressed = self._scan_log.allow(found.kind)
        if allowed:
            log.warning(
                "scan_detected",
                kind=found.kind,
                target=found.target,
                daemons=",".join(found.daemons),
                sources=found.sources,
                suppressed=suppressed,
            )

    # -- hooks the sink workers call -------------------------------------------

    def merged(self, sink: str, parts: list[Digest], merged: Digest) -> None:
        """A worker merged queued digests: the outbox learns it before the send."""
        self.store.stage_replace(sink, [d.id for d in parts], merged)
        self.commit()

    def forwarded(self, sink: str, events: int, error: Exception | None) -> None:
        """Forwarding sinks count events: their delivered and failed are events."""
        if error is None:
            self.stats.delivered[sink] += events
            self.stats.events_delivered[sink] += events
        else:
            self.stats.failed[sink] += events
            self.stats.events_failed[sink] += events

    def delivered(self, sink: str, digest: Digest, error: Exception | None) -> None:
        """A digest's fate: delivered, set aside (permanent), or kept (transient, at shutdown)."""
        stats = self.stats
        if error is None:
            stats.delivered[sink] += 1
            stats.events_delivered[sink] += digest.events
            self.store.stage_delivered(sink, digest)
        elif not isinstance(error, TransientSinkError):
            stats.failed[sink] += 1
            stats.events_failed[sink] += digest.events
            self.store.stage_failed(sink, digest, str(error))
        self.commit()
        if self.on_delivery is not None:
            self.on_delivery(sink, digest, error)
