"""Forwarding sinks: one record per event, a rate cap that holds and never drops."""

from __future__ import annotations

import asyncio
import json
import os
from functools import partial
from pathlib import Path

import pytest
from helpers import event, make_config, report_through_daemon, write_config
from timing import ManualClock

from wrapalert import config
from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.daemon.server import Server
from wrapalert.model import Event
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.scanrule import ScanRule
from wrapalert.sinks.base import TransientSinkError
from wrapalert.sinks.journald import JournaldSinkConfig
from wrapalert.sinks.jsonl import JsonlSink, JsonlSinkConfig
from wrapalert.sinks.syslog import SyslogSinkConfig
from wrapalert.sinks.webhook import WebhookSinkConfig
from wrapalert.story import held_story


class Records:
    """A forwarding sink that keeps what it is sent, with the fake time of each batch."""

    name = "records"

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.batches: list[tuple[float, list[dict[str, object]]]] = []

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.batches.append((self.clock.t, records))


def events_in(batches: list[tuple[float, list[dict[str, object]]]]) -> int:
    return sum(int(r.get("events", 1)) for _, records in batches for r in records)  # type: ignore[call-overload]


def test_over_the_rate_events_are_held_and_summed_not_dropped() -> None:
    """With 10 records a second allowed, a burst of 100 gives 10 event records now and one
    "held" record for the other 90 once the rate allows."""
    clock = ManualClock(1000.0)
    sink = Records(clock)
    worker = ForwardWorker(sink, per_second=10, clock=clock)
    for i in range(100):
        worker.offer(event("sshd" if i % 2 else "vsftpd", at=1000.0))

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(5):
            while events_in(sink.batches) < 100:  # noqa: ASYNC110 - fake time steps
                await asyncio.sleep(0)
        worker.close()
        await task

    asyncio.run(scenario())
    records = [r for _, batch in sink.batches for r in batch]
    assert [r["type"] for r in records].count("event") == 10
    (held,) = [r for r in records if r["type"] == "held"]
    assert held["events"] == 90
    assert held["daemons"] == {"sshd": 45, "vsftpd": 45}
    assert events_in(sink.batches) == 100


def test_held_record_names_its_clients_and_story() -> None:
    """A held record lists its client addresses and, when one applies, names its story by
    the daemon's numbers: one address hammering sshd past `[story] brute_force`."""
    clock = ManualClock(1000.0)
    sink = Records(clock)
    describe = partial(held_story, scan=ScanRule(600.0, 3, 16), brute_force=20)
    worker = ForwardWorker(sink, per_second=10, clock=clock, describe_held=describe)
    for _ in range(40):
        worker.offer(event(at=1000.0))

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.close()
        await task

    asyncio.run(scenario())
    (held,) = [r for _, batch in sink.batches for r in batch if r["type"] == "held"]
    assert (held["clients"], held["other_clients"]) == ({"192.0.2.1": 30}, 0)
    assert held["story"] == "brute force from 192.0.2.1 on sshd (30 tries)"


def test_records_never_exceed_the_rate() -> None:
    """Over a long flood the sink gets no more records than the rate allows (one second of
    burst included), and the records still account for every event."""
    clock = ManualClock(1000.0)
    sink = Records(clock)
    worker = ForwardWorker(sink, per_second=5, clock=clock, interval=0.5)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        for _ in range(200):  # 20 s of fake time, 10 events offered per fake 0.1 s
            for _ in range(10):
                worker.offer(event(at=1000.0))
            clock.t += 0.1
            await asyncio.sleep(0)
        worker.close()
        await task

    asyncio.run(scenario())
    *running, _shutdown = sink.batches  # the last batch: the shutdown flush, past the rate
    records = sum(len(batch) for _, batch in running)
    elapsed = running[-1][0] - 1000.0
    assert records <= 5 * elapsed + 5
    assert records >= 5 * (elapsed - 1)  # and it does use its rate: not starved
    assert events_in(sink.batches) == 2000


def test_jsonl_appends_whole_lines_privately(tmp_path: Path) -> None:
    """The jsonl sink appends one JSON object per line to a 0640 file, creating its dir."""
    path = tmp_path / "log" / "events.jsonl"
    sink = JsonlSink(JsonlSinkConfig(path=path))
    asyncio.run(sink.send_records([{"type": "event", "daemon": "a\nb"}, {"type": "held"}]))
    asyncio.run(sink.send_records([{"type": "event"}]))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["event", "held", "event"]
    assert json.loads(lines[0])["daemon"] == "a\nb"
    assert path.stat().st_mode & 0o777 == 0o640


def test_jsonl_does_not_follow_a_symlink(tmp_path: Path) -> None:
    """A symlink planted at the jsonl path is refused, and its target untouched."""
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "events.jsonl").symlink_to(target)
    sink = JsonlSink(JsonlSinkConfig(path=tmp_path / "events.jsonl"))
    with pytest.raises(TransientSinkError, match="Too many levels of symbolic links"):
        asyncio.run(sink.send_records([{"type": "event"}]))
    assert target.read_text() == ""


def test_daemon_forwards_each_event_with_its_trust(sockdir: Path) -> None:
    """Configured with a jsonl sink, the daemon writes one record per event, marking who
    reported it, next to its digests."""
    path = write_config(
        sockdir,
        sinks=f"""
[[sink]]
type = "maildir"
path = "{sockdir}/Maildir"

[[sink]]
type = "jsonl"
path = "{sockdir}/events.jsonl"
""",
    )
    cfg = config.load(path)

    report_through_daemon(cfg, ("192.0.2.1", "192.0.2.2"), "n=evil.example")
    records = [json.loads(line) for line in (sockdir / "events.jsonl").read_text().splitlines()]
    assert [r["client_addr"] for r in records] == ["192.0.2.1", "192.0.2.2"]
    assert all(r["trusted"] is True and r["uid"] == os.getuid() for r in records)
    assert records[0]["client_name"] == "evil.example"


def test_each_forwarding_sink_gets_its_own_events_per_second(sockdir: Path) -> None:
    """A [[sink]] table's events_per_second applies to that sink, whatever its type;
    without one the sink takes [limits] events_per_second."""
    cfg = make_config(
        sockdir,
        SyslogSinkConfig(events_per_second=7.0),
        JournaldSinkConfig(),
        WebhookSinkConfig(url=HttpUrl.parse("http://127.0.0.1:9/hook"), events_per_second=3.0),
    )
    server = Server(cfg)
    rates = {name: f.bucket.rate for name, f in server.runtime.sinks.forwarders.items()}
    assert rates == {"syslog": 7.0, "journald": cfg.limits.events_per_second, "webhook": 3.0}


def untrusted(daemon: str) -> Event:
    return Event({"daemon": daemon, "client_addr": "192.0.2.66"}, 1000.0, 65534, 7, False)


def test_an_untrusted_flood_never_spends_the_trusted_budget() -> None:
    """Under a flood from uid 65534, each of 40 trusted events still gets its own record;
    the flood gets its own small budget and a held record marked untrusted (break 2)."""
    clock = ManualClock(1000.0)
    sink = Records(clock)
    worker = ForwardWorker(sink, per_second=100, untrusted_per_second=1, clock=clock)
    for i in range(40):
        for _ in range(100):
            worker.offer(untrusted("CRITICAL:root-compromise"))
        worker.offer(event(f"sshd{i}", at=1000.0))

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(5):
            while events_in(sink.batches) < 4040:  # fake time steps
                clock.t += 0.5
                await asyncio.sleep(0)
        worker.close()
        await task

    asyncio.run(scenario())
    records = [r for _, batch in sink.batches for r in batch]
    trusted = [r for r in records if r["type"] == "event" and r["trusted"] is True]
    assert len(trusted) == 40
    held = [r for r in records if r["type"] == "held"]
    assert held
    assert all(r["trusted"] is False for r in held)
    assert all("daemons" not in r and "untrusted_daemons" in r for r in held)
    assert events_in(sink.batches) == 4040


def test_held_records_never_mix_trust_classes() -> None:
    """Held events of both classes go out as two records, each with its own `trusted`."""
    clock = ManualClock(1000.0)
    sink = Records(clock)
    worker = ForwardWorker(sink, per_second=1, untrusted_per_second=1, clock=clock)
    for _ in range(5):
        worker.offer(event("sshd", at=1000.0))
        worker.offer(untrusted("evil"))

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        worker.close()
        await task

    asyncio.run(scenario())
    held = {r["trusted"]: r for _, batch in sink.batches for r in batch if r["type"] == "held"}
    assert (held[True]["events"], held[True]["daemons"]) == (4, {"sshd": 4})
    assert (held[False]["events"], held[False]["untrusted_daemons"]) == (4, {"evil": 4})


def test_untrusted_events_per_second_reaches_each_forwarder(sockdir: Path) -> None:
    """[limits] untrusted_events_per_second is every forwarding sink's untrusted budget,
    never above the sink's own rate."""
    cfg = make_config(
        sockdir,
        JournaldSinkConfig(),
        WebhookSinkConfig(url=HttpUrl.parse("http://127.0.0.1:9/"), events_per_second=0.5),
    )
    server = Server(cfg)
    rates = {n: f.untrusted_bucket.rate for n, f in server.runtime.sinks.forwarders.items()}
    assert rates == {"journald": 1.0, "webhook": 0.5}


def test_untrusted_events_per_second_is_read_from_limits() -> None:
    """`[limits] untrusted_events_per_second` is parsed; without it the budget is 1."""
    assert config.loads("", "t.toml").limits.untrusted_events_per_second == 1.0
    cfg = config.loads("[limits]\nuntrusted_events_per_second = 0.25\n", "t.toml")
    assert cfg.limits.untrusted_events_per_second == 0.25


@pytest.mark.parametrize("value", ["0", "-1", "2e6", "true"])
def test_a_bad_untrusted_events_per_second_is_refused(value: str) -> None:
    """Zero, negative, huge or non-numeric budgets are a config error naming the key."""
    with pytest.raises(ConfigError, match="untrusted_events_per_second"):
        config.loads(f"[limits]\nuntrusted_events_per_second = {value}\n", "t.toml")
