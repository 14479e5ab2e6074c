"""Per-sink delivery on a fake clock: rate cap, merging, retries, isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from helpers import one_group
from timing import ManualClock

from wrapalert.model import Digest, merge_digests
from wrapalert.pipeline.deliver import RateLimit, SinkWorker
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError


class Sink:
    """A sink that records what it is given; `failures` are raised first, in order."""

    def __init__(self, name: str = "test", failures: list[Exception] | None = None) -> None:
        self.name = name
        self.failures = failures or []
        self.sent: list[Digest] = []
        self.attempts = 0

    async def send(self, digest: Digest) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(digest)


class Results:
    def __init__(self) -> None:
        self.items: list[tuple[str, int, Exception | None]] = []

    def __call__(self, sink: str, d: Digest, error: Exception | None) -> None:
        self.items.append((sink, d.events, error))


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the workers until `condition()` holds (bounded: a hang is a failure)."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - fake time: each pass lets the workers step
            await asyncio.sleep(0)


async def run_until(worker: SinkWorker, condition: object, limit: int = 10_000) -> None:
    """Let the worker run (on fake time) until `condition()` holds."""
    assert callable(condition)
    task = asyncio.create_task(worker.run())
    for _ in range(limit):
        if condition():
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("condition never held")
    worker.close()
    await asyncio.wait_for(task, 1)


def test_rate_limit_is_a_sliding_hour() -> None:
    """RateLimit allows per_hour sends in any hour and says how long to wait for the next."""
    limit = RateLimit(2)
    limit.record(0.0)
    limit.record(100.0)
    assert limit.wait(200.0) == 3400.0
    assert limit.wait(3600.0) == 0.0
    assert RateLimit(0).wait(0.0) == 0.0  # 0: no cap


def test_digests_queued_together_go_out_as_one_mail() -> None:
    """Digests waiting in the queue when the worker looks are merged into one mail, not held."""
    clock, sink, results = ManualClock(), Sink(), Results()
    worker = SinkWorker(sink, per_hour=2, on_result=results, clock=clock)
    for i in range(5):
        worker.submit(one_group(i + 1, addr=f"192.0.2.{i}"))

    asyncio.run(run_until(worker, lambda: len(sink.sent) == 1))
    assert [d.events for d in sink.sent] == [15]
    assert sink.sent[0].held == 0


def test_cap_holds_later_digests_until_the_hour_allows() -> None:
    """With the cap used up, the next mail waits for the window and carries all held events."""
    clock, sink, results = ManualClock(), Sink(), Results()
    worker = SinkWorker(sink, per_hour=1, on_result=results, clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.submit(one_group(1))
        await until(lambda: len(sink.sent) == 1)
        start = clock.t
        worker.submit(one_group(2, addr="192.0.2.2"))
        worker.submit(one_group(3, addr="192.0.2.3"))
        await until(lambda: len(sink.sent) == 2)
        assert clock.t - start >= 3600.0 - 1e-6
        worker.close()
        await task

    asyncio.run(scenario())
    assert [d.events for d in sink.sent] == [1, 5]
    assert sink.sent[1].held == 5
    assert sink.sent[1].merged == 2


def test_transient_failures_are_retried_with_growing_backoff() -> None:
    """A transient failure is retried, each wait longer, until delivery succeeds."""
    clock, results = ManualClock(), Results()
    sink = Sink(failures=[TransientSinkError("421")] * 4)
    worker = SinkWorker(sink, per_hour=0, on_result=results, clock=clock, backoff=(1.0, 4.0))
    worker.submit(one_group(3))
    asyncio.run(run_until(worker, lambda: sink.sent))
    assert sink.attempts == 5
    assert [e for _, _, e in results.items] == [None]
    # Jittered between half and all of 1, 2, 4, 4 (capped).
    for slept, base in zip(clock.sleeps, [1.0, 2.0, 4.0, 4.0], strict=True):
        assert base / 2 <= slept <= base


def test_permanent_failure_is_recorded_and_not_retried() -> None:
    """A permanent failure ends the attempt at once and is reported with its error."""
    clock, results = ManualClock(), Results()
    sink = Sink(failures=[PermanentSinkError("554 no")])
    worker = SinkWorker(sink, per_hour=0, on_result=results, clock=clock)
    worker.submit(one_group(2))
    asyncio.run(run_until(worker, lambda: results.items))
    assert sink.attempts == 1
    ((name, events, error),) = results.items
    assert (name, events) == ("test", 2)
    assert isinstance(error, PermanentSinkError)


def test_a_full_queue_merges_instead_of_dropping() -> None:
    """Past queue_max the queue collapses into one digest with every event kept."""
    clock, results = ManualClock(), Results()
    worker = SinkWorker(Sink(), per_hour=0, on_result=results, clock=clock, queue_max=3)
    for i in range(10):
        worker.submit(one_group(1, addr=f"192.0.2.{i}"))
    assert worker.depth <= 3
    assert sum(d.events for d in worker.queue) == 10


def test_a_stuck_sink_does_not_hold_up_another() -> None:
    """One sink that never answers does not delay delivery through another."""
    clock, results = ManualClock(), Results()

    class Stuck(Sink):
        async def send(self, _digest: Digest) -> None:
            await asyncio.Event().wait()

    good = Sink("good")
    workers = [
        SinkWorker(s, per_hour=0, on_result=results, clock=clock) for s in (Stuck("stuck"), good)
    ]

    async def scenario() -> None:
        tasks = [asyncio.create_task(w.run()) for w in workers]
        for w in workers:
            w.submit(one_group(1))
        await until(lambda: bool(good.sent))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert len(good.sent) == 1


def test_close_keeps_held_digests_queued_within_the_cap() -> None:
    """At shutdown the cap still holds: what waits for it stays queued (for the outbox),
    neither sent past the cap nor lost."""
    clock, sink, results = ManualClock(), Sink(), Results()

    class Stuck(ManualClock):
        async def sleep(self, _seconds: float) -> None:
            await asyncio.Event().wait()  # the hour never passes

    clock = Stuck()
    worker = SinkWorker(sink, per_hour=1, on_result=results, clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.submit(one_group(1))
        await until(lambda: bool(sink.sent))
        worker.submit(one_group(2, addr="192.0.2.9"))
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(sink.sent) == 1  # held by the cap
        worker.close()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert [d.events for d in sink.sent] == [1]
    assert [d.events for d in worker.queue] == [2]


class Gated(Sink):
    """A sink whose sends wait for `gate` (a slow server); the first may fail permanently."""

    def __init__(self, *, fail_first: bool = False) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail_first = fail_first

    async def send(self, digest: Digest) -> None:
        self.attempts += 1
        if self.fail_first:
            self.fail_first = False
            raise PermanentSinkError("554 policy")
        await self.gate.wait()
        self.sent.append(digest)


def test_a_queue_overflow_never_merges_the_digest_being_sent() -> None:
    """While a slow send is in flight, an overflowing queue merges only what waits, so no
    event is sent twice."""
    clock, sink = ManualClock(), Gated()
    worker = SinkWorker(sink, per_hour=0, on_result=Results(), clock=clock, queue_max=3)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.submit(one_group(10, "192.0.2.1"))
        await until(lambda: worker.inflight is not None)
        for i in range(4):
            worker.submit(one_group(1, f"192.0.2.{i + 2}", created=float(i + 2)))
        sink.gate.set()
        await until(lambda: sum(d.events for d in sink.sent) >= 14)
        worker.close()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert sum(d.events for d in sink.sent) == 14
    assert len({d.id for d in sink.sent}) == len(sink.sent)


def test_a_retry_during_a_send_does_not_send_it_again() -> None:
    """retry_failed() (a reload) while a digest is in flight puts back only the failed ones."""
    clock, sink = ManualClock(), Gated(fail_first=True)
    worker = SinkWorker(sink, per_hour=0, on_result=Results(), clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.submit(one_group(5, "192.0.2.1"))
        await until(lambda: len(worker.failed) == 1)
        worker.submit(one_group(7, "192.0.2.2", created=2.0))
        await until(lambda: worker.inflight is not None)
        worker.retry_failed()
        sink.gate.set()
        await until(lambda: sum(d.events for d in sink.sent) >= 12)
        worker.close()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert sum(d.events for d in sink.sent) == 12


def test_merging_keeps_every_count() -> None:
    """A merged digest sums events, held and silenced counts of its parts."""
    parts = [
        replace(one_group(n, f"192.0.2.{n}", created=float(n)), silenced=n, held=1)
        for n in (1, 2, 3)
    ]
    merged = merge_digests(parts, 10.0)
    assert (merged.events, merged.silenced, merged.held, merged.merged) == (6, 6, 3, 3)
