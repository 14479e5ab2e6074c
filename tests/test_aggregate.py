"""Grouping and timing on a fake clock: group_wait, group_interval, batching, bounds."""

from __future__ import annotations

from dataclasses import replace

from helpers import event

from wrapalert.config import DigestConfig
from wrapalert.model import MAX_DIGEST_GROUPS, OVERFLOW, Event, fold_reports
from wrapalert.pipeline.aggregate import Aggregator

CFG = replace(
    DigestConfig(), group_wait=10.0, group_interval=300.0, repeat_interval=3600.0, batch_window=1.0
)


def test_new_group_waits_group_wait() -> None:
    """A new group's first report comes group_wait after its first event, not before."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    assert agg.next_due() == 1010.0
    assert agg.collect(1009.9) == []
    (report,) = agg.collect(1010.0)
    assert (report.events, report.reason) == (1, "new group")


def test_events_during_group_wait_join_the_first_report() -> None:
    """Everything that arrives while a group waits is in its first report."""
    agg = Aggregator(CFG, 100)
    for t in range(5):
        agg.add(event(), now=1000.0 + t)
    (report,) = agg.collect(1010.0)
    assert report.events == 5
    assert (report.first_seen, report.last_seen) == (1000.0, 1004.0)


def test_new_activity_waits_group_interval() -> None:
    """After a report, new activity in the group is reported group_interval later."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    agg.collect(1010.0)
    agg.add(event(), now=1020.0)
    assert agg.next_due() == 1310.0
    assert agg.collect(1300.0) == []
    (report,) = agg.collect(1310.0)
    assert (report.events, report.total, report.reason) == (1, 2, "new activity")


def test_late_activity_is_reported_at_once_when_interval_has_passed() -> None:
    """Activity after a long quiet spell is due immediately: the interval already passed."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    agg.collect(1010.0)
    agg.add(event(), now=2000.0)
    assert agg.next_due() == 2000.0


def test_near_due_groups_join_a_due_one() -> None:
    """Groups due within batch_window of a due group go in the same batch."""
    agg = Aggregator(CFG, 100)
    agg.add(event(addr="192.0.2.1"), now=1000.0)
    agg.add(event(addr="192.0.2.2"), now=1000.8)
    agg.add(event(addr="192.0.2.3"), now=1002.0)
    reports = agg.collect(1010.0)
    assert sorted(r.label("client_addr") or "" for r in reports) == ["192.0.2.1", "192.0.2.2"]


def test_batch_window_never_sends_early_on_its_own() -> None:
    """A group due within the window is not sent while no group is actually due."""
    agg = Aggregator(replace(CFG, group_wait=0.5, batch_window=1.0), 100)
    agg.add(event(), now=1000.0)
    assert agg.collect(1000.0) == []
    assert len(agg.collect(1000.5)) == 1


def test_untrusted_events_never_share_a_group_with_trusted_ones() -> None:
    """The same daemon and address from an untrusted uid is a separate, marked group."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    agg.add(event(trusted=False, uid=1000), now=1000.0)
    reports = agg.collect(1010.0)
    assert sorted((r.trusted, r.uid) for r in reports) == [(False, 1000), (True, 0)]


def test_detail_is_bounded_but_counts_are_exact() -> None:
    """A group keeps a bounded list of addresses; the rest are counted, not listed."""
    agg = Aggregator(replace(CFG, group_by=("daemon",)), 100)
    for i in range(1000):
        agg.add(event(addr=f"10.0.{i // 256}.{i % 256}"), now=1000.0)
    (report,) = agg.collect(1010.0)
    assert report.events == 1000
    assert sum(n for _, n in report.addrs) + report.more_addrs == 1000
    assert len(report.addrs) < 100


def test_force_collects_everything_with_news() -> None:
    """At shutdown every group with news is reported, whatever its timer says."""
    agg = Aggregator(CFG, 100)
    agg.add(event(addr="192.0.2.1"), now=1000.0)
    agg.collect(1010.0)
    agg.add(event(addr="192.0.2.1"), now=1011.0)
    agg.add(event(addr="192.0.2.2"), now=1011.0)
    reports = agg.collect(1012.0, force=True)
    assert sum(r.events for r in reports) == 2
    assert {r.reason for r in reports} == {"shutdown flush"}
    assert agg.pending_events == 0


def test_timeline_counts_new_events_per_minute() -> None:
    """Each report carries its new events per minute bucket; the bars add up to the count."""
    agg = Aggregator(CFG, 100)
    for t in (1000.0, 1001.0, 1075.0, 1150.0, 1151.0, 1152.0):
        agg.add(event(), now=t)
    (report,) = agg.collect(1200.0, force=True)
    assert report.timeline == ((960.0, 2), (1020.0, 1), (1140.0, 3))
    assert sum(n for _, n in report.timeline) == report.events


def test_timeline_is_bounded_without_losing_counts() -> None:
    """A group active for longer than the timeline holds folds old bars, keeping the sum."""
    agg = Aggregator(replace(CFG, group_wait=1e6), 100)
    for minute in range(300):
        agg.add(event(), now=1000.0 + 60 * minute)
    (report,) = agg.collect(1e6, force=True)
    assert len(report.timeline) == 240
    assert sum(n for _, n in report.timeline) == 300


def test_exported_groups_restore_with_their_timers_and_counts() -> None:
    """A group saved mid-wait comes back with its counts, detail and due time."""
    agg = Aggregator(CFG, 100)
    agg.add(event(addr="192.0.2.1"), now=1000.0)
    agg.add(event(addr="192.0.2.1"), now=1001.0)
    agg.add(event("ftpd", "2001:db8::1", trusted=False, uid=1000), now=1002.0)
    saved = [agg.export(key) for key in agg.changes.groups]
    again = Aggregator(CFG, 100)
    again.restore([s for s in saved if s is not None])
    assert again.next_due() == 1010.0
    reports = {r.key: r for r in again.collect(1012.0)}
    assert reports == {r.key: r for r in agg.collect(1012.0)}
    assert reports[("sshd", "192.0.2.1")].events == 2


def test_changes_are_tracked_for_saving() -> None:
    """Adding and reporting a group mark it changed; forgetting it marks it gone (None)."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    assert list(agg.changes.groups) == [("sshd", "192.0.2.1")]
    agg.changes.groups.clear()
    agg.collect(1010.0)
    assert list(agg.changes.groups) == [("sshd", "192.0.2.1")]
    agg.changes.groups.clear()
    agg.collect(1010.0 + 3600.0)
    assert agg.changes.groups == {("sshd", "192.0.2.1"): None}


def test_an_untrusted_uid_gets_one_group_whatever_it_sends() -> None:
    """Reports from one untrusted uid all land in one group, however varied their fields."""
    agg = Aggregator(CFG, 100)
    for i in range(50):
        agg.add(event(f"daemon{i}", f"192.0.2.{i}", trusted=False, uid=1000), now=1000.0)
    agg.add(event(trusted=False, uid=1001), now=1000.0)
    assert len(agg.groups) == 2
    reports = {r.uid: r for r in agg.collect(1010.0)}
    assert reports[1000].events == 50
    assert reports[1000].labels == (("reported_by_uid", "1000"),)
    assert not reports[1000].trusted


def test_an_untrusted_group_reports_at_most_once_per_untrusted_interval() -> None:
    """After its first report, an untrusted group waits untrusted_interval, not group_interval."""
    agg = Aggregator(CFG, 100, untrusted_interval=3600.0)
    agg.add(event(trusted=False, uid=1000), now=1000.0)
    agg.add(event(), now=1000.0)
    assert len(agg.collect(1010.0)) == 2
    agg.add(event(trusted=False, uid=1000), now=1020.0)
    agg.add(event(), now=1020.0)
    assert [r.trusted for r in agg.collect(1310.0)] == [True]  # group_interval later
    (late,) = agg.collect(1010.0 + 3600.0)
    assert (late.trusted, late.events) == (False, 1)


def test_quiet_group_gets_one_repeat_then_is_forgotten() -> None:
    """repeat_interval after its last report, a quiet group is reported once more (0 new)
    and then forgotten, so memory follows activity."""
    agg = Aggregator(CFG, 100)
    for t in (1000.0, 1001.0):
        agg.add(event(), now=t)
    agg.collect(1010.0)
    assert agg.next_due() == 1010.0 + 3600.0
    assert agg.collect(1010.0 + 3599.0) == []
    (repeat,) = agg.collect(1010.0 + 3600.0)
    assert (repeat.reason, repeat.events, repeat.total, repeat.last_seen) == (
        "repeat",
        0,
        2,
        1001.0,
    )
    assert agg.groups == {}
    assert agg.next_due() is None


def test_new_activity_postpones_the_repeat() -> None:
    """A group that keeps getting events is reported for them, never as a quiet repeat."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    agg.collect(1010.0)
    agg.add(event(), now=4000.0)
    (report,) = agg.collect(4000.0)
    assert report.reason == "new activity"
    assert agg.next_due() == 4000.0 + 3600.0


def test_a_repeat_is_never_sent_early_by_the_batch_window() -> None:
    """A repeat due just after a news report waits for its own time."""
    agg = Aggregator(replace(CFG, batch_window=100.0), 100)
    agg.add(event(addr="192.0.2.1"), now=0.0)
    agg.collect(10.0)  # the repeat of .1 is due at 3610
    agg.add(event(addr="192.0.2.2"), now=3595.0)  # due at 3605, with 3610 inside its window
    assert [r.reason for r in agg.collect(3605.0)] == ["new group"]
    assert [r.reason for r in agg.collect(3610.0)] == ["repeat"]


def test_past_max_groups_sources_roll_up_by_network() -> None:
    """Beyond max_groups, new IPv4 sources join their /24 and IPv6 sources their /64."""
    agg = Aggregator(CFG, 3)
    for i in range(3):
        agg.add(event(addr=f"198.51.100.{i}"), now=1000.0)
    for i in range(50):
        agg.add(event(addr=f"192.0.2.{i}"), now=1000.0)
        agg.add(event(addr=f"2001:db8:0:1::{i:x}"), now=1000.0)
    assert len(agg.groups) == 5
    reports = {r.label("client_addr"): r for r in agg.collect(1010.0)}
    net4, net6 = reports["192.0.2.0/24"], reports["2001:db8:0:1::/64"]
    assert (net4.events, net4.sources, net4.level) == (50, 50, "network")
    assert (net6.events, net6.sources, net6.level) == (50, 50, "network")
    assert reports["198.51.100.0"].level == "exact"


def test_roll_up_widens_then_overflows_and_keeps_every_count() -> None:
    """When the network groups fill their reserve too, /16 groups and then one overflow
    group take the rest; no event is lost and memory stays bounded."""
    agg = Aggregator(CFG, 4)  # reserve 16: at most 4 + 16 + 16 groups + overflow
    sent = 0
    for a in range(40):
        for b in range(3):
            agg.add(event(addr=f"10.{a}.{b}.1"), now=1000.0)
            sent += 1
    assert len(agg.groups) <= 4 + 2 * agg.reserve + 1
    reports = agg.collect(1010.0)
    assert sum(r.events for r in reports) == sent
    levels = {r.level for r in reports}
    assert levels == {"exact", "network", "wide network", "overflow"}
    (overflow,) = [r for r in reports if r.key == (OVERFLOW,)]
    assert overflow.events > 0


def test_distinct_sources_are_exact_while_small_and_estimated_beyond() -> None:
    """A group counts its distinct sources exactly up to 256, then estimates within 10 %."""
    agg = Aggregator(replace(CFG, group_by=("daemon",)), 100)
    for i in range(200):
        agg.add(event(addr=f"10.0.0.{i}"), now=1000.0)
        agg.add(event(addr=f"10.0.0.{i}"), now=1000.0)
    (small,) = agg.collect(1010.0)
    assert (small.sources, small.sources_exact) == (200, True)
    for i in range(20_000):
        agg.add(event(addr=f"2001:db8::{i:x}"), now=2000.0)
    (big,) = agg.collect(2000.0 + 300.0)
    assert not big.sources_exact
    assert abs(big.sources - 20_000) < 2_000


def test_a_huge_batch_is_folded_into_a_bounded_digest() -> None:
    """A digest lists at most MAX_DIGEST_GROUPS groups; the rest are folded into one
    report whose counts are their sums, so the mail stays readable and nothing is lost."""
    agg = Aggregator(CFG, 10_000)
    for i in range(1000):
        for _ in range(1 + i % 3):
            agg.add(event(addr=f"10.0.{i // 256}.{i % 256}"), now=1000.0)
    agg.add(event(trusted=False, uid=1000), now=1000.0)
    reports = agg.collect(1010.0)
    folded = fold_reports(reports)
    assert len(folded) == MAX_DIGEST_GROUPS
    assert sum(r.events for r in folded) == sum(r.events for r in reports)
    assert any(not r.trusted for r in folded)
    (rest,) = [r for r in folded if r.level == "folded"]
    assert rest.labels == (("group", "902 more groups"),)
    assert sum(n for _, n in rest.timeline) == rest.events


def test_with_the_network_reserve_full_a_known_network_still_takes_its_sources() -> None:
    """Past the first reserve a new source's /24 is looked up only if one of its groups
    exists; it must then be found (and not skipped to /16), also after a restart, and
    a network whose group was forgotten no longer catches sources."""
    agg = Aggregator(CFG, 2)  # reserve 16
    agg.add(event(addr="198.51.100.1"), now=0.0)
    agg.add(event(addr="198.51.100.2"), now=0.0)  # the exact groups are full
    for i in range(agg.reserve):
        agg.add(event(addr=f"10.{i}.0.1"), now=0.0)  # 16 /24 groups: the reserve is full
    agg.add(event(addr="10.3.0.99"), now=1.0)  # its /24 has a group
    agg.add(event(addr="10.200.0.1"), now=1.0)  # its /24 has none and no room: /16
    reports = {r.label("client_addr"): r for r in agg.collect(100.0)}
    assert (reports["10.3.0.0/24"].events, reports["10.3.0.0/24"].sources) == (2, 2)
    assert reports["10.200.0.0/16"].level == "wide network"
    states = [agg.export(key) for key in agg.groups]
    restored = Aggregator(CFG, 2)
    restored.restore([s for s in states if s is not None])
    restored.add(event(addr="10.5.0.7"), now=200.0)
    assert ("sshd", "10.5.0.0/24") in {k for k, g in restored.groups.items() if g.new}
    # Quiet past repeat_interval: the groups are reported once more and forgotten.
    restored.collect(200.0 + 300.0)
    restored.collect(1e6)
    assert not restored.groups
    restored.add(event(addr="198.51.100.1"), now=2e6)
    restored.add(event(addr="198.51.100.2"), now=2e6)
    restored.add(event(addr="10.3.0.5"), now=2e6)  # a reserve place is free again: its /24
    assert ("sshd", "10.3.0.0/24") in restored.groups


def reloaded(agg: Aggregator, cfg: DigestConfig) -> Aggregator:
    """The aggregator a reload to `cfg` makes: a new one, given the old one's groups."""
    new = Aggregator(cfg, agg.max_groups, agg.untrusted_interval)
    new.restore(agg.export_all())
    return new


def test_after_group_by_changes_old_groups_tally_what_joins_them() -> None:
    """A group keyed (daemon, client_addr) = (sshd, unknown) skips its address tally; after
    a reload to (daemon, client_name), sshd events with no name land in that same key
    from many addresses: they must be tallied, not reported as one "unknown" source."""
    agg = Aggregator(CFG, 100)
    agg.add(event(addr="unknown"), now=0.0)
    agg = reloaded(agg, replace(CFG, group_by=("daemon", "client_name")))
    for i in range(1, 6):
        agg.add(event(addr=f"203.0.113.{i}"), now=1.0)
    (report,) = agg.collect(100.0)
    assert report.events == 6
    assert report.sources == 6
    assert dict(report.addrs) == {"unknown": 1, **{f"203.0.113.{i}": 1 for i in range(1, 6)}}
    # Restored under the new group_by, such a group is not fixed either.
    agg.add(event(addr="unknown"), now=200.0)
    state = agg.export(("sshd", "unknown"))
    assert state is not None
    fresh = Aggregator(replace(CFG, group_by=("daemon", "client_name")), 100)
    fresh.restore([state])
    fresh.add(event(addr="198.51.100.9"), now=201.0)
    (again,) = fresh.collect(1000.0)
    assert dict(again.addrs) == {"unknown": 1, "198.51.100.9": 1}


def test_network_counts_follow_the_groups_labels_across_a_group_by_change() -> None:
    """The /24s known to have a group are counted from each group's own labels, so
    reloads that move client_addr in group_by leave nothing behind."""
    agg = Aggregator(CFG, 2)
    swapped = replace(CFG, group_by=("client_addr", "daemon"))
    for cycle in range(10):
        agg = reloaded(agg, swapped if cycle % 2 else CFG)
        base = cycle * 1e6
        for i in range(4):
            agg.add(event(addr=f"10.{cycle}.{i}.1"), now=base)
        agg.collect(base + 100.0)
        agg.collect(base + 1e5)  # quiet: every group reported once more and forgotten
    assert not agg.groups
    assert not agg._narrow


def test_an_untrusted_group_never_shares_a_key_with_a_trusted_one() -> None:
    """With group_by fields a remote client controls (its reverse DNS name), a trusted
    event reading daemon "untrusted" and name "65534" must not land in uid 65534's
    untrusted group, nor the untrusted reports in a trusted group."""
    agg = Aggregator(replace(CFG, group_by=("daemon", "client_name")), 100)
    agg.add(event(trusted=False, uid=65534), now=0.0)
    forged = Event({"daemon": "untrusted", "client_name": "65534"}, 0.0, uid=0, trusted=True)
    agg.add(forged, now=0.0)
    reports = agg.collect(100.0)
    assert sorted((r.trusted, r.events) for r in reports) == [(False, 1), (True, 1)]


def test_a_group_forgotten_and_made_anew_in_one_commit_window_is_saved_not_deleted() -> None:
    """A quiet group's repeat forgets it; an event for its key before the next commit
    makes it anew, and the state store is told to save it, not to delete it."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    agg.collect(1010.0)
    list(agg.changes.take())  # committed
    (repeat,) = agg.collect(1010.0 + 3600.0)
    assert repeat.reason == "repeat"
    agg.add(event(), now=4700.0)
    changes = dict(agg.changes.take())
    state = changes[("sshd", "192.0.2.1")]
    assert state is not None
    assert state["new"] == 1


def test_changes_are_taken_once() -> None:
    """What a take gave is not given again: the next commit stages only news."""
    agg = Aggregator(CFG, 100)
    agg.add(event(), now=1000.0)
    assert [key for key, _ in agg.changes.take()] == [("sshd", "192.0.2.1")]
    assert list(agg.changes.take()) == []
