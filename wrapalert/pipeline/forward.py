"""Forwarding: single events to record sinks (jsonl, later syslog, journald, webhooks).

Each forwarding sink gets one `ForwardWorker`. Overload behaviour, written down:

* two token buckets (burst: one second's worth each): `per_second` for
  trusted events, `untrusted_per_second` for the rest, so a local user's
  flood spends its own budget and never a trusted event's; an event that
  finds no token in its class's bucket is *held*: counted by daemon, with
  first and last time, in fixed memory, apart per trust class;
* when tokens come back, each class's held count goes out as one record
  `{"type": "held", "trusted": T, "events": N, ...}` (it costs one token of
  that class), so the records' event counts always add up to the events
  offered: nothing dropped, trusted and untrusted never summed together.
  An untrusted held record names its daemons under `untrusted_daemons`:
  those names are whatever a local user sent, and
  its client addresses (bounded) and, for trusted events where one applies,
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
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from wrapalert.clock import SYSTEM, Clock
from wrapalert.model import Event, Tally
from wrapalert.pipeline.retry import Backoff, pause, retry
from wrapalert.scanrule import ScanSignal
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
    # The daemon's finding, not the sender's word: "tcp" (a completed handshake from the
    # client address), "udp" or "unknown" (daemon/witness.py).
    record["transport"] = event.transport
    return record


def scan_record(found: ScanSignal) -> dict[str, object]:
    """The record for one scan signal: about events already counted, so it counts none."""
    return {
        "type": "scan",
        "kind": found.kind,
        "target": found.target,
        "daemons": list(found.daemons),
        "sources": found.sources,
        "first": round(found.first, 6),
        "last": round(found.last, 6),
    }


def alert_test_record(host: str, now: float) -> dict[str, object]:
    """The record of `wrapalert test-alert`: marked as a test, from no real source."""
    return {
        "type": "event",
        "received": round(now, 6),
        "daemon": "wrapalert-test",
        "client_addr": "192.0.2.0",  # TEST-NET-1 (RFC 5737): no real source
        "client_name": "wrapalert-test-alert",
        "verdict": "deny",
        "host": host,
        "trusted": True,
        "uid": os.getuid(),
        "test": True,
    }


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
class Held:
    """Events of one trust class the rate held back: a count, by daemon, first and last."""

    trusted: bool
    events: int = 0
    daemons: Tally = field(default_factory=Tally)
    clients: Tally = field(default_factory=lambda: Tally(HELD_CLIENTS))
    first: float = 0.0
    last: float = 0.0
    unverified: int = 0  # events whose source the kernel did not vouch for (not "tcp")

    def add(self, now: float, daemon: str, client: str, transport: str = "tcp") -> None:
        if not self.events:
            self.first = now
        self.events += 1
        self.last = now
        self.daemons.add(daemon)
        self.clients.add(client)
        if transport != "tcp":
            self.unverified += 1

    def merge(self, other: Held) -> None:
        if not other.events:
            return
        self.first = other.first if not self.events else min(self.first, other.first)
        self.events += other.events
        self.last = max(self.last, other.last)
        self.daemons.merge(other.daemons)
        self.clients.merge(other.clients)
        self.unverified += other.unverified

    def release(self) -> dict[str, object]:
        """The "held" record, and start counting afresh. An untrusted class's daemon
        names are marked as such: they are whatever a local user sent."""
        names = "daemons" if self.trusted else "untrusted_daemons"
        record: dict[str, object] = {
            "type": "held",
            "trusted": self.trusted,
            "events": self.events,
            "first": round(self.first, 6),
            "last": round(self.last, 6),
            names: dict(self.daemons.top()),
            "other_daemons": self.daemons.other,
        }
        if self.trusted:  # an untrusted sender's addresses are its own invention
            record["clients"] = dict(self.clients.top())
            record["other_clients"] = self.clients.other
            record["unverified"] = self.unverified
        self.events, self.daemons, self.clients = 0, Tally(), Tally(HELD_CLIENTS)
        self.unverified = 0
        return record


@dataclass
class ForwardState:
    """What a forwarder hands its successor at a reload: records not yet sent, the held
    counts and the tokens left per trust class (so a reload cannot refill a bucket)."""

    buffer: list[dict[str, object]] = field(default_factory=list)
    held: Held = field(default_factory=lambda: Held(trusted=True))
    held_untrusted: Held = field(default_factory=lambda: Held(trusted=False))
    tokens: float | None = None
    untrusted_tokens: float | None = None


class ForwardWorker:
    """Owns one forwarding sink: `offer` is called per event, `run` is its task."""

    def __init__(
        self,
        sink: EventSink,
        *,
        per_second: float,
        untrusted_per_second: float | None = None,
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
        # None: the same rate, but still a bucket of its own.
        self.untrusted_bucket = TokenBucket(
            per_second if untrusted_per_second is None else untrusted_per_second, clock.now()
        )
        self.buffer_max = buffer_max
        self.batch = batch
        self.interval = interval
        self.backoff = Backoff(*backoff)
        self.buffer: list[dict[str, object]] = []
        self.held_trusted = Held(trusted=True)
        self.held_untrusted = Held(trusted=False)
        self.sent_events = 0
        self.failed_events = 0
        self.last_error: str | None = None
        self._closed = False
        self._stop = asyncio.Event()  # set with _closed: ends a retry's pause
        self._wake = asyncio.Event()

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def queued(self) -> int:
        """Records waiting for the sink."""
        return len(self.buffer)

    def start(self, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
        return tg.create_task(self.run(), name=f"sink:{self.name}")

    def status(self) -> dict[str, object]:
        return {
            "queued": self.queued,
            "held": self.held,
            "held_untrusted": self.held_untrusted.events,
            "held_failed": 0,
            "last_error": self.last_error,
        }

    async def send_test(self, host: str, now: float) -> None:
        """The test record, straight to the sink: past the rate limit and the buffer."""
        await self.sink.send_records([alert_test_record(host, now)])

    def offer(self, event: Event) -> None:
        """One event: a record now if the rate and the buffer allow, else held."""
        now = self.now()
        bucket = self.bucket if event.trusted else self.untrusted_bucket
        if len(self.buffer) < self.buffer_max and bucket.take(now):
            self.buffer.append(event_record(event))
            if len(self.buffer) >= self.batch:
                self._wake.set()
            return
        held = self.held_trusted if event.trusted else self.held_untrusted
        held.add(now, event.get("daemon"), event.get("client_addr"), event.transport)

    @property
    def held(self) -> int:
        """Events held back now, both trust classes."""
        return self.held_trusted.events + self.held_untrusted.events

    def offer_record(self, record: dict[str, object]) -> None:
        """A record that stands for no event (a scan signal, a hook record): past the rate
        limit, as their makers bound them (one per target per window; one a minute), but
        never past the buffer."""
        if len(self.buffer) < self.buffer_max:
            self.buffer.append(record)
            self._wake.set()

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
            self.held_trusted,
            self.held_untrusted,
            self.bucket.tokens,
            self.untrusted_bucket.tokens,
        )
        self.buffer = []
        self.held_trusted, self.held_untrusted = Held(trusted=True), Held(trusted=False)
        self.close()
        return state

    def restore(self, state: ForwardState) -> None:
        """Take over a predecessor's records, held counts and tokens."""
        self.buffer = state.buffer + self.buffer
        self.held_trusted.merge(state.held)
        self.held_untrusted.merge(state.held_untrusted)
        for bucket, tokens in (
            (self.bucket, state.tokens),
            (self.untrusted_bucket, state.untrusted_tokens),
        ):
            if tokens is not None:
                bucket.tokens = min(bucket.rate, tokens)
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
        """Each class's held count as one record, when a token of that class (or shutdown)
        allows; trusted first."""
        for held, bucket in (
            (self.held_trusted, self.bucket),
            (self.held_untrusted, self.untrusted_bucket),
        ):
            if not held.events or len(self.buffer) >= self.buffer_max:
                continue
            if self._closed or bucket.take(self.now()):
                record = held.release()
                story = self.describe_held(record) if held.trusted and self.describe_held else ""
                if story:
                    record["story"] = story
                self.buffer.append(record)

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
    """How many events a record stands for: 1, a held record's count, or 0 (a scan signal,
    a hook record: about events counted by their own records, or about none)."""
    kind = record.get("type")
    if kind == "held":
        n = record.get("events", 1)
        return n if isinstance(n, int) else 1
    return 1 if kind == "event" else 0
