"""The sink set alone (daemon/sinkset.py): each sink gets the worker its descriptor
declares, and every worker is started, handed over, asked and closed the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from timing import ManualClock

from wrapalert import config
from wrapalert.daemon.sinkset import SinkSet
from wrapalert.model import Digest
from wrapalert.sinks.base import DIGESTS, RECORDS, Built, Capabilities, PermanentSinkError


class Both:
    """A sink with both interfaces: only its declared capabilities may decide its worker."""

    def __init__(self, name: str, *, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.digests: list[Digest] = []
        self.records: list[dict[str, object]] = []

    async def send(self, digest: Digest) -> None:
        if self.fail:
            raise PermanentSinkError("550 no such user")
        self.digests.append(digest)

    async def send_records(self, records: list[dict[str, object]]) -> None:
        self.records.extend(records)


def sink_set(cfg: config.Config, built: list[Built] | None = None) -> SinkSet:
    return SinkSet(
        cfg,
        clock=ManualClock(),
        on_result=lambda *_: None,
        on_merge=lambda *_: None,
        on_forwarded=lambda *_: None,
        built=built,
    )


def digest(n: int = 1) -> Digest:
    return Digest("host", float(n), ())


def test_each_configured_sink_gets_the_worker_its_descriptor_declares(tmp_path: Path) -> None:
    """Maildir: a delivery worker; jsonl and alertmanager: forwarders, and only
    alertmanager's takes scan records; nftables: no worker, the ban sink."""
    cfg = config.loads(f"""
[[sink]]
type = "maildir"
path = "{tmp_path}/Maildir"
[[sink]]
type = "jsonl"
path = "{tmp_path}/events.jsonl"
[[sink]]
type = "alertmanager"
urls = ["http://127.0.0.1:9"]
[[sink]]
type = "nftables"
mode = "dry-run"
""")
    sinks = sink_set(cfg)
    assert list(sinks.workers) == ["maildir"]
    assert list(sinks.forwarders) == ["jsonl", "alertmanager"]
    assert [f.name for f in sinks.scan_takers] == ["alertmanager"]
    assert sinks.banner is not None
    assert sinks.banner.name == "nftables"
    assert sorted(sinks.status()) == ["alertmanager", "jsonl", "maildir"]


def test_declared_capabilities_decide_not_the_sinks_methods() -> None:
    """Two sinks with the same two methods: one declared to take digests, one records
    and scans; each gets that worker and no other."""
    sinks = sink_set(
        config.Config(),
        [Built(Both("mail"), DIGESTS), Built(Both("feed"), Capabilities(records=True, scans=True))],
    )
    assert (list(sinks.workers), list(sinks.forwarders)) == (["mail"], ["feed"])
    assert [f.name for f in sinks.scan_takers] == ["feed"]
    assert sinks.banner is None


def test_a_reload_hands_each_workers_state_to_its_successor() -> None:
    """Queued digests and buffered records move to the worker of the same name and kind;
    a removed sink's worker and one whose kind changed end; failed digests are retried."""
    old = sink_set(
        config.Config(),
        [
            Built(Both("mail"), DIGESTS),
            Built(Both("feed"), RECORDS),
            Built(Both("gone"), DIGESTS),
            Built(Both("turned"), DIGESTS),
        ],
    )
    old.workers["mail"].submit(digest(1))
    old.workers["mail"].failed.append(digest(2))
    old.forwarders["feed"].offer_record({"type": "scan"})
    new = sink_set(
        config.Config(),
        [
            Built(Both("mail"), DIGESTS),
            Built(Both("feed"), RECORDS),
            Built(Both("turned"), RECORDS),
        ],
    )
    assert new.take_over(old) == 1
    assert [d.created for d in new.workers["mail"].queue] == [2.0, 1.0]
    assert not old.workers["mail"].queue
    assert new.forwarders["feed"].buffer == [{"type": "scan"}]
    assert old.forwarders["feed"].buffer == []
    assert new.forwarders["turned"].buffer == []
    for name in ("gone", "turned"):
        assert old.workers[name]._closed.is_set()


def test_every_worker_runs_answers_a_test_alert_and_closes() -> None:
    """Started in one TaskGroup, every worker takes a test notification straight to its
    sink (a failure named per sink), then delivers what it holds and ends at close."""
    mail, feed, broken = Both("mail"), Both("feed"), Both("broken", fail=True)
    sinks = sink_set(
        config.Config(),
        [Built(mail, DIGESTS), Built(feed, RECORDS), Built(broken, DIGESTS)],
    )

    async def scenario() -> dict[str, str]:
        async with asyncio.TaskGroup() as tg:
            sinks.start(tg)
            results = await sinks.test_alert("host", 1000.0)
            sinks.workers["mail"].submit(digest(3))
            sinks.close()
            await sinks.wait(5.0)
        return results

    results = asyncio.run(scenario())
    assert results == {
        "broken": "failed: 550 no such user",
        "feed": "delivered",
        "mail": "delivered",
    }
    assert [d.groups[0].reason for d in mail.digests[:1]] == ["test"]
    assert mail.digests[1:] == [digest(3)]
    assert [r.get("test") for r in feed.records] == [True]
    assert all(task.done() for task in sinks.tasks)
