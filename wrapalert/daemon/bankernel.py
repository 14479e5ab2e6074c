"""The kernel side of the ban book: the nftables table kept equal to the book's bans.

The book (daemon/bans.py) decides; this part makes the kernel hold what it
decided, and finds out when it does not:

- `reconcile` reads the table (`nft -j list table`), compares it with the
  book's bans (bantable.py: declaration, missing and extra elements, wrong
  timeouts) and sends only the difference. The book calls it at start (a
  restart with the table kept, a reboot with it gone: the same path), every
  `reconcile` seconds, and after every failed change. What it repairs under
  a running daemon is counted (`status`: bans.kernel.repairs, metrics) and
  logged (`ban_kernel_repaired`); what it finds at start is logged only.
- `check` compares without repairing: `wrapalert status` and `test-alert`
  ask it, so they say what the kernel holds now, not at the last reconcile.
- `add`, `delete` and `flush` carry changes in one transaction each, without
  reading first (the fast path: a ban must reach the kernel within
  milliseconds); a failure there is repaired by the next reconcile.

This is the only part of the daemon that calls the ban sink: the book and the
control API reach the kernel through it.

The table's owner: the first rule's comment names the daemon that keeps it
(pid and the pid's start time, so a reused pid is no owner). At start, a
table another live wrapalert keeps is refused (`TableInUseError`: the daemon does
not start); a marker whose process is gone (a crash, a reboot with a saved
ruleset) is stale, and the table is taken over. A reconcile that finds
another live owner stops touching the table and says so in status.

A table the daemon used before (recorded in the state database) is deleted
once the one now configured holds the bans, unless another daemon keeps it.

Not thread-safe; one transaction at a time (`lock`), in order.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from wrapalert.bantable import SLACK, Drift, KernelTable, Owner
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.sinks.base import BanSink, PermanentSinkError, SinkError

log = structlog.get_logger()

PROC = Path("/proc")
TABLE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class TableInUseError(PermanentSinkError):
    """Another running wrapalert keeps the table."""


def start_time(pid: int | str, proc: Path = PROC) -> int | None:
    """A process's start time (clock ticks after boot, /proc/PID/stat field 22), or None
    when there is no such process (or it cannot be seen)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold ") "
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def this_daemon(proc: Path = PROC) -> Owner:
    return Owner(os.getpid(), start_time("self", proc) or 0)


def alive(owner: Owner, proc: Path = PROC) -> bool:
    """Whether the marker's daemon still runs: that pid, started then, a wrapalert."""
    if start_time(owner.pid, proc) != owner.start:
        return False
    try:
        cmdline = (proc / str(owner.pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return b"wrapalert" in cmdline


class KernelSync:
    """Keeps one ban sink's table equal to the book's bans; counts what it repairs."""

    def __init__(self, store: Store, stats: Stats, proc: Path = PROC) -> None:
        self.store = store
        self.stats = stats
        self.proc = proc
        self.me = this_daemon(proc)
        self.sink: BanSink | None = None
        self.lock = asyncio.Lock()
        self.synced = False  # a reconcile of the current table has succeeded
        self.found: Drift | None = None  # the last comparison (before any repair)
        self.missing = 0  # book bans the kernel did not drop at the last comparison, unrepaired
        self.checked: float | None = None
        self.old_tables: set[str] = set()

    def load(self) -> None:
        """The tables used before, from the state database (once it is open)."""
        self.old_tables |= {t for t in self.store.ban_tables() if set(t) <= TABLE_NAME}

    def configure(self, sink: BanSink | None) -> None:
        """The sink in force. A new table (or ipv6_prefix) is synced as at start; an old
        table is removed once the new one holds the bans."""
        if sink is not None and (self.sink is None or sink.layout != self.sink.layout):
            if self.sink is not None and sink.table != self.sink.table:
                self.old_tables.add(self.sink.table)
            self.synced = False  # a new table or layout: re-made as at start, not "repaired"
        self.sink = sink

    # -- start --------------------------------------------------------------------

    async def claim(self) -> None:
        """At start: refuse a table another running wrapalert keeps (TableInUseError). A kernel
        that cannot be asked is not refused here: the reconcile says why in status."""
        if self.sink is None or self.sink.rule.dry_run:
            return
        try:
            kernel = await self.sink.read()
        except Exception as exc:  # noqa: BLE001 - the reconcile retries and reports it
            log.error("ban_kernel_unavailable", error=str(exc))
            return
        self._refuse_other_owner(kernel)

    def _refuse_other_owner(self, kernel: KernelTable, table: str | None = None) -> None:
        owner = kernel.owner
        if owner is None or owner == self.me:
            return
        name = table or (self.sink.table if self.sink else "?")
        if alive(owner, self.proc):
            raise TableInUseError(
                f"table inet {name} is kept by another running wrapalert (pid {owner.pid}): "
                'give this one a table of its own (table = "..." in its [[sink]] nftables) '
                "or stop the other"
            )
        log.warning("ban_table_taken_over", table=name, stale_owner_pid=owner.pid)

    # -- comparing and repairing -------------------------------------------------------

    async def read_bans(self) -> dict[str, float]:
        """What the kernel's sets hold: target -> seconds left (the book adopts these when
        its state database is unusable)."""
        assert self.sink is not None  # noqa: S101 - the book calls this with a sink
        async with self.lock:
            kernel = await self.sink.read()
        return {t: left for t, left in kernel.targets.items() if left is not None}

    async def reconcile(self, want: Mapping[str, float], now: float) -> Drift:
        """Make the kernel hold `want` (target -> until); what differed before."""
        sink = self.sink
        assert sink is not None  # noqa: S101 - the book calls this with a sink
        left = {t: until - now for t, until in want.items()}
        async with self.lock:
            try:
                kernel = await sink.read()
                self._refuse_other_owner(kernel)
            except SinkError:
                # Nothing known of the kernel: every ban counts as not enforced.
                self.checked, self.missing = now, sum(s > SLACK for s in left.values())
                raise
            # Parsing and comparing 100,000 bans takes a while: not on the event loop.
            drift, plan = await asyncio.to_thread(_compare, sink, kernel, left, self.me)
            self._found(drift, now)
            for commands in plan:
                await sink.transaction(commands)
        self.missing = 0
        if drift.changed:
            self._count(sink.table, drift)
        if not self.synced:
            log.info("bans_synced", table=sink.table, active=len(want), found=drift.summary())
        self.synced = True
        await self._drop_old_tables(sink)
        return drift

    async def check(self, want: Mapping[str, float], now: float) -> Drift:
        """Compare without repairing (status, test-alert)."""
        sink = self.sink
        assert sink is not None  # noqa: S101 - the book calls this with a sink
        left = {t: until - now for t, until in want.items()}
        async with self.lock:
            kernel = await sink.read()
        drift, _ = await asyncio.to_thread(_compare, sink, kernel, left, self.me)
        self._found(drift, now)
        return drift

    def _found(self, drift: Drift, now: float) -> None:
        self.found = drift
        self.checked = now
        self.missing = drift.unenforced

    def _count(self, table: str, drift: Drift) -> None:
        if not self.synced:
            return  # at start: what a reboot or a stop leaves, not a repair
        repairs = self.stats.ban_repairs
        if drift.table_missing:
            repairs["table"] += 1
        elif drift.declaration:
            repairs["declaration"] += 1
        for kind, items in (
            ("missing", drift.missing),
            ("extra", drift.extra),
            ("expiry", drift.expiry),
        ):
            if items:
                repairs[kind] += len(items)
        log.warning("ban_kernel_repaired", table=table, found=drift.summary())

    async def _drop_old_tables(self, sink: BanSink) -> None:
        for table in sorted(self.old_tables - {sink.table}):
            async with self.lock:
                kernel = await sink.read(table)
                if kernel.exists:
                    owner = kernel.owner
                    if owner is not None and owner != self.me and alive(owner, self.proc):
                        log.warning("ban_table_kept", table=table, owner_pid=owner.pid)
                    else:
                        await sink.drop_table(table)
                        log.info("ban_table_removed", table=table, now_using=sink.table)
            self.old_tables.discard(table)
        if self.store.ban_tables() != [sink.table]:
            self.store.stage_ban_tables([sink.table])

    # -- changes: each in order with the others ---------------------------------------

    async def add(self, bans: Mapping[str, float]) -> None:
        """Put bans (target -> seconds) into the kernel (`ban add`, queued bans)."""
        sink = self._sink()
        async with self.lock:
            await sink.apply(bans)

    async def change(self, add: Mapping[str, float], delete: Iterable[str]) -> None:
        """Bans in (target -> seconds) and out, in one transaction (the queued changes)."""
        sink = self._sink()
        async with self.lock:
            await sink.apply(add, delete)

    async def delete(self, targets: Iterable[str]) -> None:
        """Take bans out of the kernel (`ban del`)."""
        sink = self._sink()
        async with self.lock:
            await sink.apply({}, targets)

    async def flush(self) -> None:
        """Empty the ban sets (`ban flush`)."""
        sink = self._sink()
        async with self.lock:
            await sink.flush()

    async def probe(self) -> None:
        """Whether the sink can be reached at all (a dry-run `test-alert`: nothing banned)."""
        await self._sink().send_records([])

    def _sink(self) -> BanSink:
        assert self.sink is not None  # noqa: S101 - the book calls these with a sink
        return self.sink

    def status(self) -> dict[str, object]:
        """The `kernel` object of `wrapalert status`'s bans."""
        found = self.found
        return {
            "table": self.sink.table if self.sink is not None else None,
            "in_sync": None if self.checked is None else self.missing == 0,
            "missing": self.missing,
            "found": None if found is None else found.summary(),
            "checked": self.checked,
            "repairs": dict(self.stats.ban_repairs),
            "reconcile_every": self.sink.reconcile if self.sink is not None else None,
        }


def _compare(
    sink: BanSink, kernel: KernelTable, left: Mapping[str, float], me: Owner
) -> tuple[Drift, list[list[dict[str, object]]]]:
    drift = sink.layout.diff(kernel, left, me)
    return drift, sink.layout.repair(kernel, drift, left, me)
