"""Forwarding: single events to record sinks (jsonl, later syslog, journald, webhooks).

Each forwarding sink gets one `ForwardWorker`. Overload behaviour, written down:

* a token bucket of `per_second` tokens (burst: one second's worth) caps the
  records sent; an event that finds no token is *held*: counted by daemon,
  with first and last time, in fixed memory;
* when tokens come back, the held count goes out as one record
  `{"type": "held", "events": N, ...}` (it costs one token), so the records'
  event counts always add up to the events offered: nothing dropped;
* at most `buffer_max` records wait for the sink; past that, events are held
  as above, so a stuck sink costs bounded memory;
* a transient sink failure is retried with capped backoff; a permanent one
  drops that batch and counts it in `failed_events`.

Time is injected (`now`, `sleep`) so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from wrapalert.model import Event, Tally
from wrapalert.sinks.base import EventSink, TransientSinkError, close_sink

log = structlog.get_logger()

RECORD_FIELDS = (
    "daemon",
    "daemon_pid",
    "user",
    "client",
    "client_addr",
    "client_name",
    "client_host",
    "server",
    "server_addr",
    "client_port",
    "verdict",
    "host",
)


def event_record(event: Event) -> dict[str, object]:
    """The JSON record for one event: validated fields, times, and who reported it."""
    record: dict[str, object] = {"type": "event", "received": round(event.received, 6)}
    for name in RECORD_FIELDS:
        if name in event.fields:
            record[name] = event.fields[name]
    if "time" in event.fields:
        record["time"] = float(event.fields["time"])
    record["trusted"] = event.trusted
    record["uid"] = event.uid
    return record


class TokenBucket:
    """`rate` tokens a second, at most `rate` (one second) saved up."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ForwardWorker:
    """Owns one forwarding sink: `offer` is called per event, `run` is its task."""

    def __init__(
        self,
        sink: EventSink,
        *,
        per_second: float,
        on_result: Callable[[str, int, Exception | None], None] | None = None,
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        buffer_max: int = 10_000,
        batch: int = 500,
        interval: float = 0.2,
        backoff: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self.sink = sink
        self.on_result = on_result
        self.bucket = TokenBucket(per_second, now())
        self.now = now
        self.sleep = sleep
        self.buffer_max = buffer_max
        self.batch = batch
        self.interval = interval
        self.backoff = backoff
        self.buffer: list[dict[str, object]] = []
        self.held = 0
        self.held_daemons = Tally()
        self.held_first = self.held_last = 0.0
        self.sent_events = 0
        self.failed_events = 0
        self.last_error: str | None = None
        self._closed = False
        self._wake = asyncio.Event()

    @property
    def name(self) -> str:
        return self.sink.name

    def offer(self, event: Event) -> None:
        """One event: a record now if the rate and the buffer allow, else held."""
        now = self.now()
        if len(self.buffer) < self.buffer_max and self.bucket.take(now):
            self.buffer.append(event_record(event))
            if len(self.buffer) >= self.batch:
                self._wake.set()
            return
        if not self.held:
            self.held_first = now
        self.held += 1
        self.held_last = now
        self.held_daemons.add(event.get("daemon"))

    def close(self) -> None:
        """Send what is buffered and held (past the rate, once), then let `run` return."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._closed:
                waker = asyncio.ensure_future(self._wake.wait())
                sleeper = asyncio.ensure_future(self.sleep(self.interval))
                try:
                    await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                    sleeper.cancel()
                self._wake.clear()
            self._release_held()
            while self.buffer:
                records, self.buffer = self.buffer[: self.batch], self.buffer[self.batch :]
                await self._send(records)
                if self._closed:
                    self._release_held()  # the buffer has room again: the held count goes too
            if self._closed:
                await close_sink(self.sink)
                return

    def _release_held(self) -> None:
        """The held count as one record, when a token (or shutdown) allows."""
        if not self.held or len(self.buffer) >= self.buffer_max:
            return
        if not self._closed and not self.bucket.take(self.now()):
            return
        self.buffer.append(
            {
                "type": "held",
                "events": self.held,
                "first": round(self.held_first, 6),
                "last": round(self.held_last, 6),
                "daemons": dict(self.held_daemons.top()),
                "other_daemons": self.held_daemons.other,
            }
        )
        self.held = 0
        self.held_daemons = Tally()

    async def _send(self, records: list[dict[str, object]]) -> None:
        delay, cap = self.backoff
        events = sum(_events(r) for r in records)
        while True:
            try:
                await self.sink.send_records(records)
            except TransientSinkError as exc:
                self.last_error = str(exc)
                if self._closed:
                    log.error(
                        "forward_lost_at_shutdown", sink=self.name, events=events, error=str(exc)
                    )
                    self._count(events, exc)
                    return
                log.warning("forward_retry", sink=self.name, error=str(exc), retry_in=delay)
                await self.sleep(delay)
                delay = min(delay * 2, cap)
            except Exception as exc:  # noqa: BLE001 - permanent, or a sink bug: never stop the daemon
                self.last_error = str(exc)
                self._count(events, exc)
                log.error("forward_failed", sink=self.name, events=events, error=str(exc))
                return
            else:
                self.last_error = None
                self._count(events, None)
                return

    def _count(self, events: int, error: Exception | None) -> None:
        if error is None:
            self.sent_events += events
        else:
            self.failed_events += events
        if self.on_result is not None:
            self.on_result(self.name, events, error)


def _events(record: dict[str, object]) -> int:
    """How many events a record stands for: 1, or a held record's count."""
    n = record.get("events", 1)
    return n if isinstance(n, int) else 1
