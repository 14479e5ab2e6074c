"""The hook watch: hosts.allow and hosts.deny polled (bytes compared), so an editor's
rename, an append in place and an in-place rewrite are all seen within two polls; a
problem is reported to the alarm book (one alarm-off notice), its fix too (one
alarm-on), and an edit of unrelated lines tells nothing. The link check: a service that
linked libwrap at an earlier look and no longer does is a problem; one never seen to
link it proves nothing. Real files, a real alarm book, post and state database, on a
manual clock (the running daemon in a private mount namespace: test_hook_e2e.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import PYTHON, Mailbox, SinksInForce, make_config
from timing import ManualClock

from wrapalert import config, hostsdeny
from wrapalert.cli import hosts_deny_line
from wrapalert.daemon.activity import Activity
from wrapalert.daemon.alarm import Alarm
from wrapalert.daemon.hookwatch import POLL, SETTLE_MAX, HookWatch
from wrapalert.daemon.notices import Post
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice

TCPD = "/usr/sbin/tcpd"  # links libwrap on bookworm and trixie (sshd no longer does on trixie)


class _InForce:
    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg


class Rig:
    """A hook watch over tables in `base`, its alarm book posting into one mailbox."""

    def __init__(self, base: Path, *, bin_dirs: tuple[str, ...] = ()) -> None:
        self.allow, self.deny = base / "hosts.allow", base / "hosts.deny"
        self.cfg = make_config(
            base, hook=config.HookConfig(hosts_allow=self.allow, hosts_deny=self.deny)
        )
        self.line = hosts_deny_line(self.cfg, PYTHON, form="durable") + "\n"
        self.clock = ManualClock()
        self.store = Store(base / "state", self.clock.now)
        self.store.open()
        self.mail = Mailbox(self.clock)
        self.post = Post(SinksInForce({"mail": self.mail}), self.store, self.clock, Stats())
        self.alarm = Alarm(self.store, self.clock, self.post, "web1")
        self.activity = Activity()
        self.watch = HookWatch(
            _InForce(self.cfg), self.alarm, self.activity, self.store, self.clock, bin_dirs=bin_dirs
        )
        self.allow.write_text("sshd : 192.0.2.0/255.255.255.0\n")
        self.deny.write_text("# wrapalert\n" + self.line)

    def poll(self, rounds: int = 1) -> None:
        """`rounds` polls, POLL seconds apart, as the watch's task makes them."""
        for _ in range(rounds):
            asyncio.run(self.watch.poll(self.cfg.hook))
            self.clock.t += POLL

    @property
    def notices(self) -> list[Notice]:
        return [p.notice for p in self.post.pending]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    r.poll()
    assert r.alarm.ok, r.alarm.problems()
    return r


def rename_replace(path: Path, text: str) -> None:
    """An editor's save: a new file renamed over the old one (a new inode)."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.replace(path)


def test_the_installed_line_is_no_problem_and_tells_nothing(rig: Rig) -> None:
    rig.poll(5)
    assert rig.notices == []
    assert rig.watch.status()["watching"] == [str(rig.allow), str(rig.deny)]


def test_a_rename_replace_that_drops_the_line_is_one_alarm_off_within_two_polls(
    rig: Rig,
) -> None:
    inode = rig.deny.stat().st_ino
    rename_replace(rig.deny, "# wrapalert\nALL : PARANOID\n")
    assert rig.deny.stat().st_ino != inode
    rig.poll(2)
    (notice,) = rig.notices
    assert notice.kind == "alarm-off"
    assert [(p.kind, p.path) for p in notice.problems] == [("no_hook", str(rig.deny))]
    rig.poll(10)
    assert len(rig.notices) == 1  # the same problem: told once


def test_an_append_in_place_to_hosts_allow_that_shadows_the_hook_is_seen(rig: Rig) -> None:
    inode = rig.allow.stat().st_ino
    with rig.allow.open("a") as f:  # `>>`: same inode, new size
        f.write("ALL : ALL\n")
    assert rig.allow.stat().st_ino == inode
    rig.poll(2)
    (notice,) = rig.notices
    # Both families, each named after ALL : ALL (not the admin network, which holds one
    # documentation address): one problem.
    assert [(p.kind, p.path, p.line) for p in notice.problems] == [("shadowed", str(rig.allow), 2)]


def test_an_in_place_rewrite_keeping_inode_size_and_mtime_is_seen(rig: Rig) -> None:
    """A bind-mounted file rewritten where it is: same inode, same length, its mtime put
    back; only the bytes tell (the line's socket renamed to another of the same length)."""
    before = rig.deny.stat()
    text = rig.deny.read_text()
    other = str(rig.cfg.daemon.socket).replace("notify.sock", "notifx.sock")
    with rig.deny.open("r+") as f:
        f.write(text.replace(str(rig.cfg.daemon.socket), other))
    os.utime(rig.deny, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = rig.deny.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    rig.poll(2)
    (notice,) = rig.notices  # one notice: the line's client and its logger, each named
    assert {p.kind for p in notice.problems} == {"hook_line"}
    assert all("notifx.sock, but this configuration's is" in p.message for p in notice.problems)


def test_the_fix_is_one_alarm_on_and_unrelated_edits_tell_nothing(rig: Rig) -> None:
    good = rig.deny.read_text()
    rig.deny.write_text(good.rstrip("\n"))  # the final newline dropped
    rig.poll(2)
    (off,) = rig.notices
    assert [p.kind for p in off.problems] == ["hook_line"]
    rig.deny.write_text(good)
    rig.poll(2)
    assert [n.kind for n in rig.notices] == ["alarm-off", "alarm-on"]
    assert rig.alarm.ok
    # Unrelated lines: a comment, another service's rule, an admin network in hosts.allow.
    rig.deny.write_text("# edited\n" + good + "in.ftpd : 198.51.100.7\n")
    with rig.allow.open("a") as f:
        f.write("sshd : 10.0.0.0/255.0.0.0\n")
    rig.poll(5)
    assert [n.kind for n in rig.notices] == ["alarm-off", "alarm-on"]


def test_a_table_written_in_steps_is_checked_once_it_holds_still(rig: Rig) -> None:
    """The line removed, then put back before the next poll saw it hold still: the
    half-written state tells nothing."""
    good = rig.deny.read_text()
    rig.deny.write_text("")
    rig.poll(1)
    rig.deny.write_text(good)
    rig.poll(3)
    assert rig.notices == []


def test_a_table_that_keeps_changing_is_checked_settle_max_after_its_first_change(
    rig: Rig,
) -> None:
    for n in range(int(SETTLE_MAX / POLL) + 2):
        rig.deny.write_text(f"# {n}\nALL : PARANOID\n")
        rig.poll(1)
    assert [n.kind for n in rig.notices] == ["alarm-off"]


def test_the_open_problem_survives_a_restart_and_is_not_told_again(tmp_path: Path) -> None:
    first = Rig(tmp_path)
    first.deny.write_text("ALL : PARANOID\n")
    first.poll(2)
    assert len(first.notices) == 1
    assert first.store.commit()
    first.store.close()
    again = Rig.__new__(Rig)
    again.__dict__.update(first.__dict__)
    again.store = Store(tmp_path / "state", first.clock.now)
    again.store.open()
    again.post = Post(SinksInForce({"mail": again.mail}), again.store, again.clock, Stats())
    again.alarm = Alarm(again.store, again.clock, again.post, "web1")
    again.alarm.load()
    again.post.load()
    again.watch = HookWatch(_InForce(again.cfg), again.alarm, Activity(), again.store, again.clock)
    pending = len(again.notices)  # the undelivered alarm-off, resumed
    again.poll(3)
    assert len(again.notices) == pending
    assert not again.alarm.ok


def _fake_service(directory: Path, name: str, source: str) -> None:
    directory.mkdir(exist_ok=True)
    shutil.copy(source, directory / name)


@pytest.mark.skipif(not Path(TCPD).exists(), reason="tcpd is missing (apt-get install tcpd)")
def test_a_service_that_stops_linking_libwrap_is_a_problem(tmp_path: Path) -> None:
    """A service that reported links libwrap (a copy of tcpd, by another name); then its
    binary is replaced by one that does not (/bin/true): one alarm-off naming it."""
    bins = tmp_path / "bin"
    _fake_service(bins, "in.wrapped", TCPD)
    r = Rig(tmp_path, bin_dirs=(str(bins),))
    r.activity.seen("in.wrapped", r.clock.t)
    r.poll()
    assert r.alarm.ok
    assert r.watch.linked == {"in.wrapped": True}
    shutil.copy("/bin/true", bins / "in.wrapped")
    asyncio.run(r.watch.check_links())
    (notice,) = r.notices
    assert [(p.kind, p.path, p.key) for p in notice.problems] == [
        ("unlinked", str(bins / "in.wrapped"), "unlinked:in.wrapped")
    ]


def test_a_service_never_seen_linking_libwrap_proves_nothing(tmp_path: Path) -> None:
    """A reporting service whose binary never linked it (wrapped by something we do not
    know): no problem."""
    bins = tmp_path / "bin"
    _fake_service(bins, "in.fingerd", "/bin/true")
    r = Rig(tmp_path, bin_dirs=(str(bins),))
    r.activity.seen("in.fingerd", r.clock.t)
    r.poll()
    asyncio.run(r.watch.check_links())
    assert r.alarm.ok
    assert r.notices == []
    assert r.watch.linked == {"in.fingerd": False}


def test_watch_false_withdraws_the_problems_without_a_notice(rig: Rig) -> None:
    rig.deny.write_text("ALL : PARANOID\n")
    rig.poll(2)
    assert not rig.alarm.ok
    rig.cfg = replace(rig.cfg, hook=replace(rig.cfg.hook, watch=False))
    rig.watch.in_force = _InForce(rig.cfg)

    async def one_round() -> None:
        task = asyncio.create_task(rig.watch.run())
        await asyncio.sleep(0)
        task.cancel()

    asyncio.run(one_round())
    assert rig.alarm.ok
    assert [n.kind for n in rig.notices] == ["alarm-off"]
    assert rig.watch.status()["watching"] == []


def test_the_line_the_watch_compares_with_is_this_installations(rig: Rig) -> None:
    """The watch's expected line is the one `hosts-deny-line` prints for this config."""
    install = hostsdeny.Install.here(PYTHON, rig.cfg.daemon.socket, rig.cfg.daemon.spool_dir)
    assert install.line(form="durable") + "\n" == rig.line
