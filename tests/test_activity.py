"""daemon/activity.py alone: trusted refusals per daemon and UTC day, each daemon's last
one, the average the quiet watch reads, bounded in days and daemons, saved and restored."""

from __future__ import annotations

import json

from wrapalert.daemon.activity import DAY, KEEP_DAYS, MAX_DAEMONS, Activity

T0 = 1_700_006_400.0  # a UTC midnight (19675 days after the epoch)


def test_counts_go_by_utc_day_and_the_last_refusal_is_kept() -> None:
    activity = Activity()
    for at in (T0 + 1, T0 + 2, T0 + DAY - 1, T0 + DAY + 5):
        activity.seen("sshd", at)
    activity.seen("in.ftpd", T0 + 3)
    day = int(T0 // DAY)
    assert activity.days == {day: {"sshd": 3, "in.ftpd": 1}, day + 1: {"sshd": 1}}
    assert activity.last == {"sshd": T0 + DAY + 5, "in.ftpd": T0 + 3}
    assert activity.reporters(T0) == ["sshd", "in.ftpd"]
    assert activity.reporters(T0 + 10) == ["sshd"]


def test_the_average_is_over_the_days_up_to_the_one_given() -> None:
    """Seven days of 14 refusals, then none: 14 a day up to the last; three days on, the
    seven days up to then hold four busy ones: 8 a day."""
    activity = Activity()
    for d in range(7):
        for n in range(14):
            activity.seen("sshd", T0 + d * DAY + n)
    last = activity.last["sshd"]
    assert activity.average("sshd", last) == 14.0
    assert activity.average("sshd", last + 3 * DAY) == 8.0
    assert activity.average("vsftpd", last) == 0.0


def test_old_days_are_dropped_as_days_go_by() -> None:
    activity = Activity()
    activity.seen("sshd", T0)
    activity.seen("sshd", T0 + KEEP_DAYS * DAY)
    assert list(activity.days) == [int(T0 // DAY) + KEEP_DAYS]


def test_past_the_cap_a_new_daemon_replaces_the_one_quiet_longest() -> None:
    """Names come from root's hook, but any number of them: memory stays bounded."""
    activity = Activity()
    for n in range(MAX_DAEMONS):
        activity.seen(f"d{n}", T0 + n)
    activity.seen("d0", T0 + 10_000)  # d0 reports again: d1 is now the longest quiet
    activity.seen("newcomer", T0 + 10_001)
    assert len(activity.last) == MAX_DAEMONS
    assert "d1" not in activity.last
    assert all("d1" not in counts for counts in activity.days.values())
    assert {"d0", "newcomer"} <= set(activity.last)


def test_what_is_saved_comes_back_and_a_damaged_document_costs_only_counts() -> None:
    activity = Activity()
    activity.seen("sshd", T0)
    activity.seen("sshd", T0 + DAY)
    saved = json.loads(json.dumps(activity.save()))
    assert not activity.dirty
    again = Activity()
    again.restore(saved)
    assert (again.days, again.last) == (activity.days, activity.last)
    again.seen("sshd", T0 + DAY + 1)  # counting goes on into the restored day
    assert again.days[int(T0 // DAY) + 1] == {"sshd": 2}
    damaged: object
    for damaged in (None, [], {"days": 1}, {"days": {"x": {}}, "last": {"sshd": "soon"}}):
        broken = Activity()
        broken.restore(damaged)
        assert (broken.days, broken.last) == ({}, {})
