"""pipeline/retry.py alone: the backoff's pauses, a pause a wake-up ends, and the retry
loop every sink worker runs, on a manual clock or on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from timing import ManualClock, VirtualClock, run

from wrapalert.pipeline.retry import Backoff, pause, retry
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError


def fixed(value: float) -> Callable[[], float]:
    """A jitter source that always draws `value` (random.random's range is [0, 1))."""
    return lambda: value


class Attempts:
    """An attempt that fails with `failures`, in order, then succeeds; counts its calls."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


def test_pauses_double_from_first_up_to_the_cap() -> None:
    """Without jitter the pauses are first, 2x, 4x ... and then the cap, again and again."""
    following = Backoff(1.0, 10.0, jitter=fixed(1.0)).pauses()
    assert [following() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_jitter_shortens_a_pause_by_at_most_half() -> None:
    """The smallest draw halves the pause, the largest keeps it: retries from many hosts
    spread over [delay/2, delay], and never wait longer than the cap."""
    low = Backoff(4.0, 8.0, jitter=fixed(0.0)).pauses()
    high = Backoff(4.0, 8.0, jitter=fixed(1.0)).pauses()
    assert [low() for _ in range(3)] == [2.0, 4.0, 4.0]
    assert [high() for _ in range(3)] == [4.0, 8.0, 8.0]


def test_each_sequence_of_pauses_starts_again_from_first() -> None:
    """A new delivery's pauses do not inherit the last one's long waits."""
    backoff = Backoff(1.0, 60.0, jitter=fixed(1.0))
    spent = backoff.pauses()
    for _ in range(5):
        spent()
    assert backoff.pauses()() == 1.0


def test_pause_sleeps_the_whole_time_when_nobody_wakes_it() -> None:
    """Left alone, a pause takes exactly the seconds asked, on the clock it was given."""
    clock = VirtualClock()

    async def scenario() -> float:
        start = clock.now()
        await pause(clock, 300.0, asyncio.Event())
        return clock.now() - start

    assert run(scenario()) == pytest.approx(300.0, abs=0.01)


def test_pause_ends_when_the_wake_event_is_set() -> None:
    """A shutdown (the wake event) cuts a five-minute pause short at once."""
    clock = VirtualClock()

    async def scenario() -> float:
        wake = asyncio.Event()
        start = clock.now()
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, wake.set)
        await pause(clock, 300.0, wake)
        return clock.now() - start

    assert run(scenario()) == pytest.approx(2.0, abs=0.01)


def test_pause_returns_at_once_if_already_woken() -> None:
    """A pause asked for after shutdown began does not sleep at all."""
    clock = ManualClock()
    wake = asyncio.Event()
    wake.set()
    asyncio.run(pause(clock, 300.0, wake))
    assert clock.sleeps == []


def test_pause_leaves_no_task_behind() -> None:
    """Whichever way it ends, the pause's sleeper and waiter are gone after it."""
    clock = VirtualClock()

    async def scenario() -> set[asyncio.Task[object]]:
        wake = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, wake.set)
        await pause(clock, 60.0, wake)
        await asyncio.sleep(0)  # let the cancelled ones finish
        await pause(clock, 1.0, asyncio.Event())
        await asyncio.sleep(0)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert run(scenario()) == set()


def test_a_first_success_takes_one_attempt_and_no_pause() -> None:
    """An attempt that succeeds is made once; nothing sleeps and nothing is reported."""
    clock, attempt, retried = ManualClock(), Attempts(), []
    asyncio.run(
        retry(
            attempt,
            backoff=Backoff(1.0, 60.0),
            clock=clock,
            closed=asyncio.Event(),
            on_retry=lambda exc, s: retried.append((exc, s)),
        )
    )
    assert (attempt.calls, clock.sleeps, retried) == (1, [], [])


def test_transient_failures_are_retried_after_the_backoffs_pauses() -> None:
    """Two transient failures: two pauses of the backoff's sequence, then the third
    attempt succeeds and retry returns; each retry is reported with its pause."""
    clock = ManualClock()
    first, second = TransientSinkError("421 busy"), TransientSinkError("451 later")
    attempt, retried = Attempts(first, second), []
    asyncio.run(
        retry(
            attempt,
            backoff=Backoff(2.0, 60.0, jitter=fixed(1.0)),
            clock=clock,
            closed=asyncio.Event(),
            on_retry=lambda exc, s: retried.append((exc, s)),
        )
    )
    assert attempt.calls == 3
    assert clock.sleeps == [2.0, 4.0]
    assert retried == [(first, 2.0), (second, 4.0)]


def test_a_permanent_failure_goes_to_the_caller_at_once() -> None:
    """Anything but a transient failure is not retried: it reaches the caller unchanged."""
    clock, refused = ManualClock(), PermanentSinkError("554 policy")
    attempt = Attempts(refused)
    with pytest.raises(PermanentSinkError) as caught:
        asyncio.run(retry(attempt, backoff=Backoff(1.0, 60.0), clock=clock, closed=asyncio.Event()))
    assert caught.value is refused
    assert (attempt.calls, clock.sleeps) == (1, [])


def test_once_closed_a_transient_failure_is_raised_not_retried() -> None:
    """After shutdown began, the next transient failure ends the loop: no retry outlives
    its worker."""
    clock, closed = ManualClock(), asyncio.Event()
    closed.set()
    attempt = Attempts(TransientSinkError("421 busy"))
    with pytest.raises(TransientSinkError):
        asyncio.run(retry(attempt, backoff=Backoff(1.0, 60.0), clock=clock, closed=closed))
    assert (attempt.calls, clock.sleeps) == (1, [])


def test_closing_during_a_pause_ends_it_and_the_loop() -> None:
    """A worker closed while it waits out an hour's backoff tries once more at once, and a
    transient failure then ends the loop instead of another pause."""
    clock = VirtualClock()

    async def scenario() -> tuple[float, int]:
        closed = asyncio.Event()
        attempt = Attempts(*(TransientSinkError("421 busy") for _ in range(5)))
        asyncio.get_running_loop().call_later(10.0, closed.set)
        start = clock.now()
        with pytest.raises(TransientSinkError):
            await retry(
                attempt,
                backoff=Backoff(3600.0, 3600.0, jitter=fixed(1.0)),
                clock=clock,
                closed=closed,
            )
        return clock.now() - start, attempt.calls

    elapsed, calls = run(scenario())
    assert elapsed == pytest.approx(10.0, abs=0.01)
    assert calls == 2


def test_a_cancel_during_a_pause_is_not_swallowed() -> None:
    """Cancelling the worker while it pauses cancels the retry loop (CancelledError goes
    through)."""
    clock = VirtualClock()

    async def scenario() -> bool:
        attempt = Attempts(*(TransientSinkError("421 busy") for _ in range(5)))
        task = asyncio.create_task(
            retry(attempt, backoff=Backoff(60.0, 60.0), clock=clock, closed=asyncio.Event())
        )
        await asyncio.sleep(1.0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert run(scenario())
