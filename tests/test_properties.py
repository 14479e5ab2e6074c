"""Properties of aggregation and delivery for any event sequence, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from helpers import one_group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timing import ManualClock

from wrapalert.config import DigestConfig
from wrapalert.daemon.silences import Silence, Silences
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher
from wrapalert.model import Digest, Event, GroupReport
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.deliver import HOUR, SinkWorker
from wrapalert.pipeline.mute import Mute, Muter

CFG = replace(
    DigestConfig(), group_wait=10.0, group_interval=60.0, repeat_interval=600.0, batch_window=2.0
)
EPS = 1e-6  # float sums of generated gaps
ADDRS = [
    "192.0.2.1",
    "192.0.2.77",
    "198.51.100.3",
    "2001:db8::1",
    "2001:db8:0:0:1::9",
    "10.0.0.1",
    "unknown",
]


@dataclass(frozen=True)
class Step:
    gap: float  # seconds since the previous event
    daemon: str
    addr: str
    trusted: bool


steps = st.lists(
    st.builds(
        Step,
        st.floats(0, 120, allow_nan=False),
        st.sampled_from(["sshd", "ftpd", "x"]),
        st.sampled_from(ADDRS),
        st.booleans(),
    ),
    max_size=120,
)


def drive(
    agg: Aggregator, muters: Sequence[Muter], sequence: list[Step]
) -> tuple[list[tuple[float, GroupReport]], dict[str, Any]]:
    """Feed events as the daemon does: every timer fires exactly when due, before the next
    event; then a final flush. Returns (time, report) pairs and counts."""
    now, out = 1000.0, []
    counts: dict[str, Any] = {"accepted": 0, "muted": 0}
    created: dict[tuple[str, ...], list[float]] = {}
    for step in sequence:
        now += step.gap
        while (due := agg.next_due()) is not None and due <= now:
            out += [(due, r) for r in agg.collect(due)]
        event = Event(
            {"daemon": step.daemon, "client_addr": step.addr},
            now,
            uid=0 if step.trusted else 1000,
            trusted=step.trusted,
        )
        counts["accepted"] += 1
        if any(m.mutes(event, now) for m in muters):
            counts["muted"] += 1
            continue
        before = set(agg.groups)
        agg.add(event, now)
        for key in set(agg.groups) - before:
            created.setdefault(key, []).append(now)
    out += [(now, r) for r in agg.collect(now + 1e6, force=True)]
    return out, {"created": created, **counts}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.integers(1, 6))
def test_every_accepted_event_is_reported_exactly_once(
    sequence: list[Step], max_groups: int
) -> None:
    """Over any sequence the reported event counts add up to the accepted events less the
    muted ones: nothing lost, nothing counted twice, whatever the roll-ups did."""
    silences = Silences(Store(Path("never-opened")), ManualClock())
    silences.live = [Silence(1, (Matcher.parse("client=198.51.100.0/24"),), 0, 1e12)]
    out, counts = drive(Aggregator(CFG, max_groups), (Mute(daemons=("x",)), silences), sequence)
    assert sum(r.events for _, r in out) == counts["accepted"] - counts["muted"]
    assert all(r.events == 0 for _, r in out if r.reason == "repeat")


@settings(max_examples=150, deadline=None)
@given(steps)
def test_first_report_is_never_later_than_group_wait(sequence: list[Step]) -> None:
    """A new group's first report comes no later than group_wait after its first event, and
    no earlier than group_wait less the batch window."""
    out, counts = drive(Aggregator(CFG, 1000), (), sequence)
    for when, report in out:
        if report.reason == "new group":
            # The group's latest creation before this report (a forgotten group may return).
            born = max(t for t in counts["created"][report.key] if t <= when)
            waited = when - born
            assert CFG.group_wait - CFG.batch_window - EPS <= waited <= CFG.group_wait + EPS


@settings(max_examples=150, deadline=None)
@given(steps)
def test_news_is_reported_at_most_once_per_group_interval(sequence: list[Step]) -> None:
    """Two reports of new activity in one group are never closer than group_interval."""
    out, _ = drive(Aggregator(CFG, 1000), (), sequence)
    last: dict[tuple[str, ...], float] = {}
    for when, report in out:
        if report.reason in ("new group", "new activity"):
            if report.key in last and report.reason == "new activity":
                assert when - last[report.key] >= CFG.group_interval - CFG.batch_window - EPS
            last[report.key] = when


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 2000, allow_nan=False), min_size=1, max_size=60), st.integers(1, 5))
def test_no_sink_exceeds_its_cap_and_nothing_is_dropped(gaps: list[float], cap: int) -> None:
    """However digests arrive, a sink never sends more than its cap in any hour, and every
    event submitted is sent."""
    sent: list[tuple[float, int]] = []
    clock = ManualClock(0.0)

    class Sink:
        name = "mail"

        async def send(self, d: Digest) -> None:
            sent.append((clock.t, d.events))

    async def scenario() -> None:
        worker = SinkWorker(Sink(), per_hour=cap, on_result=lambda *_: None, clock=clock)
        task = asyncio.create_task(worker.run())
        for n, gap in enumerate(gaps):
            clock.t += gap
            worker.submit(one_group(n + 1, f"192.0.2.{n}", created=float(n)))
            for _ in range(5):
                await asyncio.sleep(0)
        while worker.depth:  # let held digests go out as the fake hours pass
            await asyncio.sleep(0)
            clock.t += 1.0
        worker._closed.set()
        worker._ready.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    times = [t for t, _ in sent]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + HOUR) <= cap
    assert sum(e for _, e in sent) == sum(range(1, len(gaps) + 1))
