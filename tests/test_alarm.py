"""daemon/alarm.py alone: one alarm-off notice per new problem, nothing for the same
problem again (also after a restart, also when its line moved), one alarm-on notice when
the last is fixed, no notice for a withdrawn source; and the hook records for Alertmanager
(firing while broken, refreshed, resolved once fixed)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from helpers import Mailbox, SinksInForce
from timing import ManualClock

from wrapalert.daemon.alarm import REFRESH, Alarm
from wrapalert.daemon.notices import Post
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice, Problem

NO_HOOK = Problem("no_hook:/etc/hosts.deny", "no_hook", "/etc/hosts.deny", 0, "no rule", "add it")
SHADOWED = Problem(
    "shadowed:/etc/hosts.allow:sshd : ALL", "shadowed", "/etc/hosts.allow", 3, "allows", "narrow"
)
CANARY = Problem("canary:/etc/hosts.deny:ALL", "canary", "/etc/hosts.deny", 7, "lost", "check")


class Forwarder:
    """A forwarding sink's worker as the post offers it records (offer_record)."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def offer_record(self, record: dict[str, object]) -> None:
        self.records.append(record)


class Book:
    """An alarm book on a real state database, its post in front of no sink but a
    forwarder (the notices wait in the post, where the test reads them)."""

    def __init__(self, base: Path, clock: ManualClock) -> None:
        self.store = Store(base / "state", clock.now)
        self.store.open()
        self.forwarder = Forwarder()
        self.mail = Mailbox(clock)
        self.post = Post(
            SinksInForce({"mail": self.mail}, [self.forwarder]), self.store, clock, Stats()
        )
        self.alarm = Alarm(self.store, clock, self.post, "web1")
        self.post.load()
        self.alarm.load()

    @property
    def notices(self) -> list[Notice]:
        return [p.notice for p in self.post.pending]

    def close(self) -> None:
        assert self.store.commit()
        self.store.close()


def test_a_new_problem_is_told_once_and_the_same_again_is_not(tmp_path: Path) -> None:
    clock = ManualClock()
    book = Book(tmp_path, clock)
    book.alarm.report("tables", [NO_HOOK])
    clock.t += 10
    book.alarm.report("tables", [NO_HOOK])
    (notice,) = book.notices
    assert (notice.kind, notice.problems) == ("alarm-off", (replace(NO_HOOK, since=1e6),))
    assert not book.alarm.ok
    assert book.alarm.problems()[0].since == 1e6  # first seen, not last


def test_a_problem_whose_line_moved_is_the_same_problem(tmp_path: Path) -> None:
    """Same key, new line and message (lines added above it): nothing told, status new."""
    book = Book(tmp_path, ManualClock())
    book.alarm.report("tables", [SHADOWED])
    book.alarm.report("tables", [replace(SHADOWED, line=5, message="allows, line 5")])
    assert len(book.notices) == 1
    assert [(p["line"], p["message"]) for p in book.alarm.status()["problems"]] == [
        (5, "allows, line 5")
    ]


def test_a_second_problem_is_told_with_the_first_still_open(tmp_path: Path) -> None:
    book = Book(tmp_path, ManualClock())
    book.alarm.report("tables", [NO_HOOK])
    book.alarm.report("canary", [CANARY])
    _, second = book.notices
    assert [p.key for p in second.problems] == [CANARY.key]
    assert [p.key for p in second.still_open] == [NO_HOOK.key]


def test_the_last_fix_is_one_alarm_on_naming_everything_fixed(tmp_path: Path) -> None:
    """Fixing one of two problems tells nothing (the alarm is still off); fixing the last
    tells one alarm-on that names both."""
    book = Book(tmp_path, ManualClock())
    book.alarm.report("tables", [NO_HOOK, SHADOWED])
    book.alarm.report("tables", [SHADOWED])
    assert [n.kind for n in book.notices] == ["alarm-off"]
    book.alarm.report("tables", [])
    _, on = book.notices
    assert on.kind == "alarm-on"
    assert {p.key for p in on.problems} == {NO_HOOK.key, SHADOWED.key}
    assert book.alarm.ok
    book.alarm.report("tables", [])
    assert len(book.notices) == 2


async def deliver(post: Post) -> None:
    """Run the post until nothing waits."""
    task = asyncio.create_task(post.run())
    while post.pending:  # noqa: ASYNC110 - each pass lets the post step
        await asyncio.sleep(0)
    task.cancel()


def test_the_open_problems_outlive_a_restart(tmp_path: Path) -> None:
    """Saved with the commit: the next start tells nothing of a problem already told, and
    tells the fix when it finds one."""
    clock = ManualClock()
    book = Book(tmp_path, clock)
    book.alarm.report("tables", [NO_HOOK])
    asyncio.run(deliver(book.post))
    assert [n.kind for _, n in book.mail.notices] == ["alarm-off"]
    book.close()
    again = Book(tmp_path, clock)
    again.alarm.report("tables", [NO_HOOK])
    assert again.notices == []
    assert again.alarm.problems()[0].since == 1e6
    again.alarm.report("tables", [])
    (notice,) = again.notices
    assert notice.kind == "alarm-on"


def test_a_notice_not_yet_delivered_outlives_a_restart(tmp_path: Path) -> None:
    """The alarm-off and the open problem are committed together: a restart resends it."""
    book = Book(tmp_path, ManualClock())
    book.alarm.report("tables", [NO_HOOK])
    book.close()
    again = Book(tmp_path, ManualClock())
    assert [(p.sink, p.notice.kind) for p in again.post.pending] == [("mail", "alarm-off")]


def test_a_withdrawn_source_tells_nothing(tmp_path: Path) -> None:
    """[hook] watch turned off: its problems go without an alarm-on (nobody knows)."""
    book = Book(tmp_path, ManualClock())
    book.alarm.report("tables", [NO_HOOK])
    book.alarm.withdraw("tables")
    assert [n.kind for n in book.notices] == ["alarm-off"]
    assert book.alarm.ok


def test_hook_records_fire_while_broken_and_resolve_when_fixed(tmp_path: Path) -> None:
    """A record at each change, and again every REFRESH seconds while broken (at +60 and
    +120 s here; the fix comes at +180 s), none once fixed."""
    clock = ManualClock()
    book = Book(tmp_path, clock)
    book.alarm.report("tables", [NO_HOOK])
    (broken,) = book.forwarder.records
    assert (broken["type"], broken["ok"], broken["since"]) == ("hook", False, 1e6)
    assert broken["problems"] == ["/etc/hosts.deny: no rule"]

    async def refreshes() -> None:
        task = asyncio.create_task(book.alarm.run())
        while clock.t < 1e6 + 3 * REFRESH:  # noqa: ASYNC110 - fake time: the alarm steps
            await asyncio.sleep(0)
        book.alarm.report("tables", [])
        while clock.t < 1e6 + 5 * REFRESH:  # noqa: ASYNC110 - fake time: the alarm steps
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(refreshes())
    kinds = [r["ok"] for r in book.forwarder.records]
    assert kinds == [False, False, False, True]
