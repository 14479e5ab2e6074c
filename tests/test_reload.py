"""The reloader alone (daemon/reload.py): a new config's runtime built completely, then
swapped in whole; a build that fails changes nothing; restart-only keys kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from timing import VirtualClock, run

from wrapalert import config
from wrapalert.confkeys import sink_name
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.reload import Reloader
from wrapalert.daemon.runtime import Runtime, RuntimeBuilder
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.store import Store
from wrapalert.model import Digest, Event
from wrapalert.sinks import registry
from wrapalert.sinks.base import DigestLook

TOML = """
[daemon]
socket = "{base}/notify.sock"
state_dir = "{base}/state"
trusted_uids = [0]
[digest]
group_wait = "10s"
[hook]
watch = false  # this host's /etc/hosts.deny is not the test's business
[[sink]]
type = "maildir"
path = "{base}/Maildir"
"""


@dataclass(frozen=True)
class BrokenConfig:
    name: str = sink_name("broken")


class Broken:
    name = "broken"

    async def send(self, digest: Digest) -> None:
        raise AssertionError(digest)


def unbuildable(_cfg: BrokenConfig, _look: DigestLook) -> Broken:
    raise OSError("templates: permission denied")


@pytest.fixture
def broken_sink() -> Iterator[None]:
    """A "test-broken" sink type whose build fails, as an unreadable template dir does."""
    registry.register(
        registry.DigestSinkType(
            name="test-broken",
            config=BrokenConfig,
            describe=lambda _cfg: "fails to build",
            build=unbuildable,
        )
    )
    try:
        yield
    finally:
        registry.unregister("test-broken")


def reloader(tmp_path: Path, clock: VirtualClock) -> Reloader:
    store = Store(tmp_path / "state")
    store.open()
    ledger = Ledger(store, clock)
    bans = Bans(store, clock, ledger.stats)
    parts = RuntimeBuilder(clock=clock, ledger=ledger, silences=Silences(store, clock), bans=bans)
    first = parts.build(config.loads(TOML.format(base=tmp_path)))
    return Reloader(parts, first, ledger=ledger, bans=bans)


def event(at: float) -> Event:
    return Event({"daemon": "sshd", "client_addr": "192.0.2.1"}, at, uid=0)


def test_a_new_config_is_swapped_in_whole(tmp_path: Path) -> None:
    """After `apply`: the new runtime is in force for intake (its accept, its trusted
    uids), has the old groups, runs its own digest timer; the old timer is stopped."""
    clock = VirtualClock()

    async def scenario() -> tuple[Reloader, Runtime, Runtime]:
        holder = reloader(tmp_path, clock)
        async with asyncio.TaskGroup() as tg:
            holder.start(tg)
            old = holder.runtime
            holder.accept(event(clock.now()))
            new_cfg = config.loads(TOML.format(base=tmp_path).replace("[0]", "[0, 1000]"))
            holder.apply(new_cfg)
            await asyncio.sleep(0)
            new = holder.runtime
            holder.accept(event(clock.now()))
            await holder.stop(grace=1.0)
        return holder, old, new

    holder, old, new = run(scenario())
    assert new is not old
    assert holder.trusted_uids == frozenset({0, 1000})
    assert holder.accept == holder.runtime.pipeline.accept
    assert holder.runtime.aggregator.groups[("sshd", "192.0.2.1")].total == 2
    assert old.scheduler.task is not None
    assert old.scheduler.task.cancelled()
    assert new.scheduler.task is not None
    assert new.scheduler.task.cancelled()  # stopped at the end too


def test_a_config_that_cannot_be_built_changes_nothing(tmp_path: Path, broken_sink: None) -> None:
    """A build that fails raises before the swap: the old runtime, its sinks and the ban
    book's sink stay in force."""
    del broken_sink
    holder = reloader(tmp_path, VirtualClock())
    old = holder.runtime
    bad = config.loads(TOML.format(base=tmp_path) + '[[sink]]\ntype = "test-broken"\n')
    with pytest.raises(OSError, match="permission denied"):
        holder.apply(bad)
    assert holder.runtime is old
    assert holder.accept == old.pipeline.accept
    assert holder.bans.sink is None


def test_what_only_a_restart_can_change_is_kept_and_said(tmp_path: Path) -> None:
    """A new socket path or state dir is logged as needing a restart and kept as it was;
    the rest of the config applies."""
    holder = reloader(tmp_path, VirtualClock())
    moved = TOML.format(base=tmp_path).replace("notify.sock", "elsewhere.sock")
    moved = moved.replace('group_wait = "10s"', 'group_wait = "20s"')
    with capture_logs() as logs:
        holder.apply(config.loads(moved))
    assert holder.cfg.daemon.socket == tmp_path / "notify.sock"
    assert holder.cfg.digest.group_wait == 20.0
    assert {"event": "reload_needs_restart", "key": "daemon.socket", "log_level": "warning"} in logs


def test_a_bad_config_file_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    """`reload` of a file that does not parse returns False and keeps the runtime."""
    holder = reloader(tmp_path, VirtualClock())
    old = holder.runtime
    path = tmp_path / "wrapalert.toml"
    path.write_text("[digest]\ngroup_wait = soon\n")
    assert holder.reload(path) is False
    assert holder.runtime is old
    path.write_text(TOML.format(base=tmp_path))
    assert holder.reload(path) is True
    assert holder.runtime is not old
