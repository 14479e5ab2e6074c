"""Per-sink delivery: rate limit, merge, retry, report.

Each sink gets one `SinkWorker`, so a slow or failing sink never holds up
another. Overload behaviour, written down:

* the queue holds at most `queue_max` digests; past that, everything queued
  is merged into one digest (counts kept, detail merged), so memory is
  bounded and nothing is dropped;
* at most `per_hour` sends in any sliding hour (0: no cap), at shutdown too
  (the owner seeds the window from its log, so restarts cannot reset it). A
  digest that must wait absorbs every digest queued meanwhile and is marked
  `held`;
* a transient failure is retried with capped, jittered exponential backoff;
  a permanent one is reported through `on_result` and the digest set aside
  in `failed` until `retry_failed` (a reload) puts it back in the queue.

The owner keeps a durable copy of the queue (the outbox): `on_merge` tells
it before a merged digest is sent, so a crash can never re-send the parts
under other Message-IDs than the whole.

Time is injected (a `Clock`) so tests run on a virtual clock; retries use the
one backoff loop every worker shares (pipeline/retry.py). The chain, per
digest: rate limit -> outbox (`on_merge` records before send) -> retry ->
record (`on_result`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import structlog

from wrapalert.clock import SYSTEM, Clock
from wrapalert.model import Digest, alert_test_report, merge_digests
from wrapalert.pipeline.retry import Backoff, pause, retry
from wrapalert.sinks.base import PermanentSinkError, Sink, TransientSinkError

log = structlog.get_logger()

ResultHook = Callable[[str, Digest, Exception | None], None]
MergeHook = Callable[[str, list[Digest], Digest], None]
HOUR = 3600.0


class RateLimit:
    """At most `per_hour` events in any sliding hour; memory is `per_hour` timestamps."""

    def __init__(self, per_hour: int, sent: Iterable[float] = ()) -> None:
        self.per_hour = per_hour
        # Kept across a reload, so a new cap counts the mails already sent this hour.
        self.sent: deque[float] = deque(sent, maxlen=per_hour or None)

    def wait(self, now: float) -> float:
        """Seconds until a send is allowed (0: now)."""
        if not self.per_hour or len(self.sent) < self.per_hour:
            return 0.0
        return max(0.0, self.sent[0] + HOUR - now)

    def record(self, now: float) -> None:
        if self.per_hour:
            self.sent.append(now)


@dataclass
class WorkerState:
    """What a worker hands its successor at a reload: the same things the outbox keeps."""

    queue: list[Digest] = field(default_factory=list)
    failed: list[Digest] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # send times within the cap's hour
    last_error: str | None = None


class SinkWorker:
    """Owns one sink's queue; `run` is its task."""

    def __init__(
        self,
        sink: Sink,
        *,
        per_hour: int,
        on_result: ResultHook,
        clock: Clock = SYSTEM,
        queue_max: int = 100,
        backoff: tuple[float, float] = (1.0, 300.0),
        on_merge: MergeHook | None = None,
    ) -> None:
        self.sink = sink
        self.limit = RateLimit(per_hour)
        self.on_result = on_result
        self.clock = clock
        self.now = clock.now
        self.queue_max = queue_max
        self.backoff = Backoff(*backoff)
        self.on_merge = on_merge
        self.queue: deque[Digest] = deque()
        self.failed: list[Digest] = []
        self.inflight: Digest | None = None
        self.last_error: str | None = None
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def depth(self) -> int:
        return len(self.queue) + (self.inflight is not None)

    def start(self, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
        return tg.create_task(self.run(), name=f"sink:{self.name}")

    def status(self) -> dict[str, object]:
        return {
            "queued": self.depth,
            "held_failed": len(self.failed),
            "last_error": self.last_error,
        }

    async def send_test(self, host: str, now: float) -> None:
        """A digest of one test report (no events: no count changes), past the cap."""
        await self.sink.send(Digest(host, now, (alert_test_report(now),)))

    def submit(self, digest: Digest) -> None:
        """Queue a digest; never blocks, never drops (merges when full)."""
        self.queue.append(digest)
        if len(self.queue) > self.queue_max:
            self._merge_queue(held=False)
        self._ready.set()

    def restore(self, state: WorkerState) -> None:
        """Take over queued and set-aside digests and the cap's send times (startup, reload)."""
        self.queue.extend(state.queue)
        self.failed.extend(state.failed)
        self.limit = RateLimit(self.limit.per_hour, state.sent)
        self.last_error = state.last_error or self.last_error
        if self.queue:
            self._ready.set()

    def hand_over(self) -> WorkerState:
        """Give up everything but a digest in flight (which this worker still finishes),
        and end once that is done: its successor takes the rest (a reload)."""
        state = WorkerState(
            list(self.queue), list(self.failed), list(self.limit.sent), self.last_error
        )
        self.queue.clear()
        self.failed.clear()
        self.close()
        return state

    def retry_failed(self) -> int:
        """Put permanently failed digests back in the queue (after a reload); how many."""
        count = len(self.failed)
        self.queue.extendleft(reversed(self.failed))
        self.failed.clear()
        if count:
            self._ready.set()
        return count

    def _merge_queue(self, *, held: bool) -> Digest:
        """Replace the whole queue by one digest, telling the outbox first."""
        parts = list(self.queue)
        digest = merge_digests(parts, self.now())
        if held:
            digest = replace(digest, held=digest.events, id="")
        if digest is not parts[0] and self.on_merge is not None:
            self.on_merge(self.name, parts, digest)
        self.queue.clear()
        self.queue.append(digest)
        return digest

    def close(self) -> None:
        """Deliver what is queued and the cap allows, then let `run` return; what the cap
        holds stays queued (the owner's outbox keeps it for the next start)."""
        self._closed.set()
        self._ready.set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                if self._closed.is_set():
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            held = False
            while (wait := self.limit.wait(self.now())) > 0:
                if self._closed.is_set():
                    return  # the cap holds even at shutdown: the outbox keeps the rest
                held = True
                await pause(self.clock, wait, self._closed)
            digest = self._merge_queue(held=held)
            # Out of the queue while it is being sent: a merge or a retry_failed() meanwhile
            # must not fold it into another digest (that would send its events twice).
            self.queue.popleft()
            self.inflight = digest
            try:
                await self._deliver(digest)
            finally:
                self.inflight = None

    async def _deliver(self, digest: Digest) -> None:
        def retrying(exc: TransientSinkError, seconds: float) -> None:
            self.last_error = str(exc)
            log.warning(
                "delivery_retry",
                sink=self.name,
                digest=digest.id,
                error=str(exc),
                retry_in=round(seconds, 3),
            )

        try:
            await retry(
                lambda: self.sink.send(digest),
                backoff=self.backoff,
                clock=self.clock,
                closed=self._closed,
                on_retry=retrying,
            )
        except TransientSinkError as exc:  # closed: it stays in the outbox for the next start
            self.last_error = str(exc)
            log.warning(
                "delivery_deferred_at_shutdown",
                sink=self.name,
                digest=digest.id,
                events=digest.events,
                error=str(exc),
            )
            self.on_result(self.name, digest, exc)
        except PermanentSinkError as exc:
            log.error("delivery_failed", sink=self.name, digest=digest.id, error=str(exc))
            self._set_aside(digest, exc)
        except Exception as exc:  # a sink bug must not take the daemon down
            log.exception("delivery_crashed", sink=self.name, digest=digest.id)
            self._set_aside(digest, exc)
        else:
            self.last_error = None
            self.limit.record(self.now())  # failed attempts sent no mail: they cost nothing
            log.info("delivered", sink=self.name, digest=digest.id, events=digest.events)
            self.on_result(self.name, digest, None)

    def _set_aside(self, digest: Digest, exc: Exception) -> None:
        self.last_error = str(exc)
        self.failed.append(digest)
        self.on_result(self.name, digest, exc)
