"""A group's saved state (pipeline/aggregate.py): derived from the Group dataclass's
fields, JSON-ready, restored exactly; changed groups journalled once, for any aggregator."""

from __future__ import annotations

import json
from dataclasses import fields, replace

from wrapalert.config import DigestConfig
from wrapalert.model import Event
from wrapalert.pipeline.aggregate import Aggregator, Changes, Group
from wrapalert.scanrule import ScanSignal

CFG = replace(DigestConfig(), group_wait=10.0, batch_window=0.0)


def busy() -> Aggregator:
    """An aggregator with a trusted group (a scan marked on it) and an untrusted one."""
    agg = Aggregator(CFG, 100)
    for i in range(3):
        fields_ = {"daemon": "sshd", "client_addr": "192.0.2.1", "user": f"u{i}"}
        agg.add(Event(fields_, 100.0 + i, uid=0, transport="tcp"), 100.0 + i)
    agg.add(Event({"daemon": "x", "client_addr": "1.2.3.4"}, 101.0, uid=1000, trusted=False), 101.0)
    signal = ScanSignal("daemons", "192.0.2.1", ("a", "b", "sshd"), 1, 90.0, 100.0)
    agg.escalate(("sshd", "192.0.2.1"), signal, "critical")
    return agg


def test_every_field_is_saved_as_json_and_restored_exactly() -> None:
    """The saved state has one entry per Group field (a new field needs no more code),
    survives JSON, and a restored aggregator saves the same state and reports the same."""
    agg = busy()
    states = agg.export_all()
    assert all(set(s) == {f.name for f in fields(Group)} for s in states)
    again = Aggregator(CFG, 100)
    again.restore(json.loads(json.dumps(states)))
    assert again.export_all() == states
    assert again.next_due() == agg.next_due() == 110.0
    assert again.collect(200.0) == agg.collect(200.0)


def test_a_state_saved_before_a_field_existed_takes_its_default() -> None:
    """Fields an older version did not save (the scan marks, the transports, the fixed
    values) come back as their defaults; the group still reports its counts."""
    state = busy().export(("sshd", "192.0.2.1"))
    assert state is not None
    for name in ("scan", "transports", "fixed_daemon", "fixed_addr"):
        del state[name]
    agg = Aggregator(CFG, 100)
    agg.restore([state])
    (report,) = agg.collect(200.0)
    assert (report.events, report.scan, report.transports) == (3, (), ())
    assert report.addrs == (("192.0.2.1", 3),)  # fixed again from the labels


def test_one_journal_takes_the_changes_of_every_aggregator_once() -> None:
    """A reload's new aggregator writes into the same Changes as the old one; each change
    is taken once, a forgotten group as None."""
    changes = Changes()
    old = Aggregator(CFG, 100, changes=changes)
    old.add(Event({"daemon": "sshd", "client_addr": "192.0.2.1"}, 0.0, uid=0), 0.0)
    new = Aggregator(CFG, 100, changes=changes)
    new.restore(old.export_all())
    new.add(Event({"daemon": "sshd", "client_addr": "192.0.2.2"}, 1.0, uid=0), 1.0)
    taken = dict(changes.take())
    assert sorted(taken) == [("sshd", "192.0.2.1"), ("sshd", "192.0.2.2")]
    assert list(changes.take()) == []
    new.collect(20.0)
    new.collect(20.0 + CFG.repeat_interval)  # quiet: reported once more, then forgotten
    assert dict(changes.take()) == {("sshd", "192.0.2.1"): None, ("sshd", "192.0.2.2"): None}
