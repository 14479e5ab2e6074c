"""Forwarding: single events to record sinks (jsonl, later syslog, journald, webhooks).

Each forwarding sink gets one `ForwardWorker`. Overload behaviour, written down:

* a token bucket of `per_second` tokens (burst: one second's worth) caps the
  records sent; an event that finds no token is *held*: counted by daemon,
  with first and last time, in fixed memory;
* when tokens come back, the held count goes out as one record
  `{"type": "held", "events": N, ...}` (it costs one token), so the records'
  event counts always add up to the events offered: nothing dropped; it
  names its daemons and client addresses (bounded) and, when one applies,
  its `story` (a scan, a sweep, a brute force: `describe_held`);
* at most `buffer_max` records wait for the sink; past that, events are held
  as above, so a stuck sink costs bounded memory;
* a transient sink failure is retried with the backoff every worker shares
  (pipeline/retry.py); a permanent one drops that batch and counts it in
  `failed_events`.

Time is injected (a `Clock`) so tests run on a virtual clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from wrapalert.clock import SYSTEM, Clock
from wrapalert.model import Event, Tally
from wrapalert.pipeline.retry import Backoff, pause, retry
from wrapalert.sinks.base import EventSink, TransientSinkError, close_sink

log = structlog.get_logger()

HELD_CLIENTS = 64  # client addresses a held record lists (a sweep's are many); others counted

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


@dataclass
class ForwardState:
    """What a forwarder hands its successor at a reload: records not yet sent, the held
    count and the tokens left (so a reload cannot refill the bucket)."""

    buffer: list[dict[str, object]] = field(default_factory=list)
    held: int = 0
    held_daemons: Tally = field(default_factory=Tally)
    held_first: float = 0.0
    held_last: float = 0.0
    tokens: float | None = None
    held_clients: Tally = field(default_factory=lambda: Tally(HELD_CLIENTS))


class ForwardWorker:
    """Owns one forwarding sink: `offer` is called per event, `run` is its task."""

    def __init__(
        self,
        sink: EventSink,
        *,
        per_second: float,
        on_result: Callable[[str, int, Exception | None], None] | None = None,
        clock: Clock = SYSTEM,
        buffer_max: int = 10_000,
        batch: int = 500,
        interval: float = 0.2,
        backoff: tuple[float, float] = (1.0, 300.0),
        describe_held: Callable[[dict[str, object]], str] | None = None,
    ) -> None:
        self.sink = sink
        self.describe_held = describe_held  # a held record's story (wrapalert.story.held_story)
        self.on_result = on_result
        self.clock = clock
        self.now = clock.now
        self.bucket = TokenBucket(per_second, clock.now())
        self.buffer_max = buffer_max
        self.batch = batch
        self.interval = interval
        self.backoff = Backoff(*backoff)
        self.buffer: list[dict[str, object]] = []
        self.held = 0
        self.held_daemons = Tally()
        self.held_clients = Tally(HELD_CLIENTS)
        self.held_first = self.held_last = 0.0
        self.sent_events = 0
        self.failed_events = 0
        self.last_error: str | None = None
        self._closed = False
        self._stop = asyncio.Event()  # set with _closed: ends a retry's pause
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
        self.held_clients.add(event.get("client_addr"))

    def close(self) -> None:
        """Send what is buffered and held (past the rate, once), then let `run` return."""
        self._closed = True
        self._stop.set()
        self._wake.set()

    def hand_over(self) -> ForwardState:
        """Give up what is buffered and held to a successor (a reload) and end once a
        batch in flight is sent."""
        state = ForwardState(
            self.buffer,
            self.held,
            self.held_daemons,
            self.held_first,
            self.held_last,
            self.bucket.tokens,
            self.held_clients,
        )
        self.buffer, self.held, self.held_daemons = [], 0, Tally()
        self.held_clients = Tally(HELD_CLIENTS)
        self.close()
        return state

    def restore(self, state: ForwardState) -> None:
        """Take over a predecessor's records, held count and tokens."""
        self.buffer = state.buffer + self.buffer
        if state.held:
            self.held_first = state.held_first if not self.held else self.held_first
            self.held += state.held
            self.held_last = max(self.held_last, state.held_last)
            self.held_daemons.merge(state.held_daemons)
            self.held_clients.merge(state.held_clients)
        if state.tokens is not None:
            self.bucket.tokens = min(self.bucket.rate, state.tokens)
        if self.buffer:
            self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._closed:
                await pause(self.clock, self.interval, self._wake)
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
        record: dict[str, object] = {
            "type": "held",
            "events": self.held,
            "first": round(self.held_first, 6),
            "last": round(self.held_last, 6),
            "daemons": dict(self.held_daemons.top()),
            "other_daemons": self.held_daemons.other,
            "clients": dict(self.held_clients.top()),
            "other_clients": self.held_clients.other,
        }
        story = self.describe_held(record) if self.describe_held is not None else ""
        if story:
            record["story"] = story
        self.buffer.append(record)
        self.held = 0
        self.held_daemons = Tally()
        self.held_clients = Tally(HELD_CLIENTS)

    async def _send(self, records: list[dict[str, object]]) -> None:
        events = sum(_events(r) for r in records)

        def retrying(exc: TransientSinkError, seconds: float) -> None:
            self.last_error = str(exc)
            log.warning("forward_retry", sink=self.name, error=str(exc), retry_in=round(seconds, 3))

        try:
            await retry(
                lambda: self.sink.send_records(records),
                backoff=self.backoff,
                clock=self.clock,
                closed=self._stop,
                on_retry=retrying,
            )
        except TransientSinkError as exc:  # closed: nowhere durable to keep them
            self.last_error = str(exc)
            log.error("forward_lost_at_shutdown", sink=self.name, events=events, error=str(exc))
            self._count(events, exc)
        except Exception as exc:  # noqa: BLE001 - permanent, or a sink bug: never stop the daemon
            self.last_error = str(exc)
            self._count(events, exc)
            log.error("forward_failed", sink=self.name, events=events, error=str(exc))
        else:
            self.last_error = None
            self._count(events, None)

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
