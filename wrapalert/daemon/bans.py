"""The ban book: which sources are banned, why and until when, and the kernel kept in step.

Decisions come from the ban stage (a source past the threshold, or one
address refused by several daemons: a scan; both counted from reports the
kernel vouches for only, pipeline/ban.py) and from `wrapalert ban add`.
Each is checked here against the rule: an allowlisted
target or a full book (`max_bans`) is refused, and the refusal recorded;
in dry-run mode the ban is recorded as one that would have been made and
nothing reaches the kernel. Every ban, refusal, expiry and lifting is
staged in the state database (tables `bans` and `ban_log`, committed with
the next group commit), counted in Stats, logged, and noted for the next
digest's "Banned" section.

The kernel side: automatic bans are queued and carried out by `run` in one
nft transaction per batch, retried with the shared backoff on failure
(`last_error` in status says why meanwhile); `ban add|del|flush` wait for
their own transaction, so `ban del` frees the address when it returns.
After a start (and after a reload that brings the sink) `run` first makes
the kernel's sets hold exactly the active bans of the state database, each
with the time it has left: a restart, even after a reboot that emptied the
ruleset, keeps bans and state consistent. A failed kernel change is retried
the same way (a table deleted under the daemon comes back whole). Without a usable state database
the bans the kernel still holds are adopted instead.

Bounded, written down: at most `max_bans` bans; refusals are remembered
(so a refused source is not re-examined at every threshold) for at most
MAX_REFUSED targets; at most NOTES_MAX notes wait for a digest, the rest
are counted in one "more" note.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import structlog

from wrapalert.banrule import BanRule, BanTargetError
from wrapalert.clock import Clock
from wrapalert.daemon import control
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.pipeline.ban import BanStage
from wrapalert.pipeline.retry import Backoff
from wrapalert.scanrule import ScanRule
from wrapalert.sinks.base import BanSink, SinkError

log = structlog.get_logger()

MAX_REFUSED = 16_384
NOTES_MAX = 100
MAX_MANUAL = 366 * 86400.0  # seconds: `ban add --for` at most a year
# One note for the digest: (action, target, reason, until). Actions: "banned",
# "would ban" (dry-run), "refused", "expired", "lifted", and "more" (target = a count).
Note = tuple[str, str, str, float]


@dataclass
class Ban:
    target: str
    reason: str
    since: float
    until: float
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "dry_run": self.dry_run,
        }


class Bans:
    """Owns the active bans; `run` is its task (kernel changes and expiry)."""

    def __init__(
        self, store: Store, clock: Clock, stats: Stats, backoff: tuple[float, float] = (1.0, 60.0)
    ) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.backoff = Backoff(*backoff)
        self.sink: BanSink | None = None
        self.rule = BanRule()
        self.active: dict[str, Ban] = {}
        self.refused: dict[str, float] = {}  # target -> until when it is not re-examined
        # target -> until, for the stage: active bans and remembered refusals
        self.settled: dict[str, float] = {}
        self.notes: list[Note] = []
        self.more_notes = 0
        self.last_error: str | None = None
        self._to_add: dict[str, float] = {}  # target -> until, queued for the kernel
        self._synced = False
        self._stage: BanStage | None = None
        self._kernel = asyncio.Lock()  # one nft transaction at a time, in order
        self._wake = asyncio.Event()

    # -- configuration ------------------------------------------------------------

    def configure(self, sink: BanSink | None) -> None:
        """The ban sink in force (None: bans are neither made nor lifted; those in the
        kernel keep their expiry). A new table is used only after a restart."""
        if sink is not None and self.sink is not None and sink.table != self.sink.table:
            log.warning("reload_needs_restart", key="sink.nftables.table", keeping=self.sink.table)
            sink.table = self.sink.table
        if sink is not None and self.sink is None:
            self._synced = False  # first sink, or one a reload brought: sync the kernel
        self.sink = sink
        if sink is not None:
            self.rule = sink.rule
        self._wake.set()

    def stage(self, scan: ScanRule | None = None) -> BanStage | None:
        """The pipeline's ban stage for the rule in force, finding scans by `scan` (the
        [scan] rule, None when off); its counts survive a reload that keeps threshold and
        window (and the scan rule)."""
        if self.sink is None:
            self._stage = None
            return None
        old = self._stage
        stage = BanStage(self.rule, self.settled, self.request, scan)
        if old is not None and (old.rule.threshold, old.rule.window) == (
            self.rule.threshold,
            self.rule.window,
        ):
            stage.counter = old.counter
        if old is not None and old.scans is not None and stage.scans is not None:
            stage.scans = old.scans if old.scans.rule == stage.scans.rule else stage.scans
        self._stage = stage
        return stage

    def load(self) -> None:
        """The bans the state database holds (at start, before any event is accepted), and
        the notes on them no digest has carried yet."""
        now = self.clock.now()
        self.notes, self.more_notes = self.store.ban_notes()
        for target, reason, since, until, dry_run in self.store.bans():
            ban = Ban(target, reason, since, until, dry_run)
            if until <= now:
                self._expire(ban, now, note="expired while wrapalert was stopped")
                continue
            self.active[target] = ban
            self.settled[target] = until

    # -- decisions ----------------------------------------------------------------

    def request(self, target: str, reason: str, now: float) -> None:
        """An automatic ban (from the stage or a scan): made, refused, or in dry-run noted."""
        if self.sink is None or target in self.active:
            return
        rule = self.rule
        why = self._refusal(target)
        if why is not None:
            self._refuse(target, reason, why, now)
            return
        self._record(Ban(target, reason, now, now + rule.ban_for, rule.dry_run), now)
        if not rule.dry_run:
            self._to_add[target] = now + rule.ban_for
            self._wake.set()

    def _refusal(self, target: str) -> str | None:
        if self.rule.allowed(target):
            return "allowlisted"
        if len(self.active) >= self.rule.max_bans:
            return "cap"
        return None

    def _refuse(self, target: str, reason: str, why: str, now: float) -> None:
        self.stats.bans_refused[why] += 1
        # Cap: looked at again after a window (a slot may free); allowlisted: after ban_for.
        until = now + (self.rule.window if why == "cap" else self.rule.ban_for)
        if len(self.refused) >= MAX_REFUSED:
            oldest = next(iter(self.refused))
            del self.refused[oldest]
            self.settled.pop(oldest, None)
        self.refused[target] = until
        self.settled[target] = until
        self.store.stage_ban_log(now, f"refused: {why}", target, reason, None)
        self._note(("refused", target, f"{reason}; {why}", until))
        log.warning("ban_refused", target=target, reason=reason, why=why)

    def _record(self, ban: Ban, now: float) -> None:
        self.active[ban.target] = ban
        self.settled[ban.target] = ban.until
        self.refused.pop(ban.target, None)
        action = "would ban" if ban.dry_run else "banned"
        if ban.dry_run:
            self.stats.bans_dry_run += 1
        else:
            self.stats.bans += 1
        self.store.stage_ban(ban.target, ban.reason, ban.since, ban.until, dry_run=ban.dry_run)
        self.store.stage_ban_log(now, action, ban.target, ban.reason, ban.until)
        self._note((action, ban.target, ban.reason, ban.until))
        log.warning(
            "ban_added",
            target=ban.target,
            reason=ban.reason,
            until=round(ban.until, 3),
            dry_run=ban.dry_run,
        )

    def _lift(self, ban: Ban, now: float, why: str) -> None:
        self.active.pop(ban.target, None)
        self.settled.pop(ban.target, None)
        self._to_add.pop(ban.target, None)
        self.stats.bans_lifted += 1
        self.store.stage_unban(ban.target)
        self.store.stage_ban_log(now, "lifted", ban.target, why, None)
        self._note(("lifted", ban.target, why, now))
        log.info("ban_lifted", target=ban.target, why=why)

    def _expire(self, ban: Ban, now: float, note: str = "expired") -> None:
        self.active.pop(ban.target, None)
        self.settled.pop(ban.target, None)
        self.stats.bans_expired += 1
        self.store.stage_unban(ban.target)
        self.store.stage_ban_log(now, "expired", ban.target, ban.reason, ban.until)
        self._note(("expired", ban.target, ban.reason, ban.until))
        log.info("ban_expired", target=ban.target, reason=ban.reason, note=note)

    def _note(self, note: Note) -> None:
        if len(self.notes) < NOTES_MAX:
            self.notes.append(note)
        else:
            self.more_notes += 1
        self.store.stage_ban_notes(self.notes, self.more_notes)

    def take_notes(self) -> tuple[Note, ...]:
        """What happened to bans since the last digest (the digest's "Banned" section)."""
        notes = list(self.notes)
        if self.more_notes:
            notes.append(("more", str(self.more_notes), "", 0.0))
        if notes:
            self.notes, self.more_notes = [], 0
            self.store.stage_ban_notes([], 0)  # committed with the digest that carries them
        return tuple(notes)

    # -- the task -------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the kernel in step: sync after a start, carry out queued bans, expire."""
        following = self.backoff.pauses()
        while True:
            delay: float | None = None
            try:
                if self.sink is not None:
                    await self._sync_once()
                    await self._apply_queued()
                self.last_error = None
                following = self.backoff.pauses()
            except SinkError as exc:
                self.last_error = str(exc)
                # The next try re-declares the table and re-syncs it from the books: a
                # table deleted under us (or a ruleset flushed) comes back whole.
                self._synced = False
                delay = following()
                log.error("ban_kernel_failed", error=str(exc), retry_in=round(delay, 3))
            self._expire_due()
            soonest = min(self.settled.values(), default=None)
            if soonest is not None:
                wait = max(0.0, soonest - self.clock.now()) + 0.01
                delay = wait if delay is None else min(delay, wait)
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    async def _sync_once(self) -> None:
        if self._synced or self.sink is None:
            return
        sink, now = self.sink, self.clock.now()
        async with self._kernel:
            if self.rule.dry_run:
                pass  # dry-run touches nothing in the kernel
            elif self.store.error is not None:  # no state to trust: adopt the kernel's
                await sink.ensure()
                for target, left in (await sink.elements()).items():
                    if target not in self.active:
                        ban = Ban(target, "found in the kernel", now, now + left)
                        self.active[target] = ban
                        self.settled[target] = ban.until
            else:
                real = [b for b in self.active.values() if not b.dry_run]
                await sink.ensure([(b.target, b.until - now) for b in real])
        self._to_add.clear()
        self._synced = True
        log.info("bans_synced", table=sink.table, active=len(self.active))

    async def _apply_queued(self) -> None:
        if not self._to_add or self.sink is None:
            return
        now = self.clock.now()
        batch = dict(self._to_add)
        async with self._kernel:
            await self.sink.apply([(t, until - now) for t, until in batch.items() if until > now])
        for target, until in batch.items():
            if self._to_add.get(target) == until:  # not renewed meanwhile
                del self._to_add[target]

    def _expire_due(self) -> None:
        now = self.clock.now()
        for target, until in list(self.settled.items()):
            if until > now:
                continue
            ban = self.active.get(target)
            if ban is not None:
                self._expire(ban, now)
            else:
                self.refused.pop(target, None)
                self.settled.pop(target, None)

    # -- the control API ------------------------------------------------------------

    def _require_sink(self) -> BanSink:
        if self.sink is None:
            raise control.ControlError("no nftables sink is configured")
        return self.sink

    def _target(self, text: object) -> str:
        if not isinstance(text, str):
            raise control.ControlError("name an address, e.g. 203.0.113.7")
        try:
            return self.rule.parse_target(text)
        except BanTargetError as exc:
            raise control.ControlError(str(exc)) from None

    async def api_list(self, _req: dict[str, Any]) -> dict[str, Any]:
        self._expire_due()
        return {
            "mode": self.rule.mode if self.sink is not None else None,
            "table": self.sink.table if self.sink is not None else None,
            "bans": [b.as_dict() for b in sorted(self.active.values(), key=lambda b: b.until)],
        }

    async def api_add(self, req: dict[str, Any]) -> dict[str, Any]:
        sink = self._require_sink()
        target = self._target(req.get("addr"))
        seconds = req.get("seconds", self.rule.ban_for)
        # JSON true is an int to Python: a duration must be a number, never a boolean.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise control.ControlError("a ban's duration is a number of seconds")
        if not 0 < seconds <= MAX_MANUAL:
            raise control.ControlError("a ban lasts more than 0 seconds and at most a year")
        if self.rule.allowed(target):
            raise control.ControlError(f"{target} is allowlisted: it is never banned")
        if target not in self.active and len(self.active) >= self.rule.max_bans:
            raise control.ControlError(f"max_bans ({self.rule.max_bans}) reached")
        now = self.clock.now()
        ban = Ban(target, "by hand", now, now + float(seconds), self.rule.dry_run)
        if not ban.dry_run:
            await self._kernel_change(sink.apply([(target, float(seconds))]))
        self._record(ban, now)
        self.store.commit()
        self._wake.set()  # its expiry may be the soonest
        return ban.as_dict()

    async def api_del(self, req: dict[str, Any]) -> dict[str, Any]:
        sink = self._require_sink()
        target = self._target(req.get("addr"))
        ban = self.active.get(target)
        if ban is None:
            raise control.ControlError(f"{target} is not banned")
        if not ban.dry_run:
            await self._kernel_change(sink.apply((), [target]))
        self._lift(ban, self.clock.now(), "by hand (wrapalert ban del)")
        self.store.commit()
        return {"target": target}

    async def api_flush(self, _req: dict[str, Any]) -> dict[str, Any]:
        sink = self._require_sink()
        if not self.rule.dry_run:
            await self._kernel_change(sink.flush())
        now = self.clock.now()
        lifted = list(self.active.values())
        for ban in lifted:
            self._lift(ban, now, "by hand (wrapalert ban flush)")
        self.store.commit()
        return {"lifted": len(lifted)}

    async def _kernel_change(self, change: Awaitable[None]) -> None:
        async with self._kernel:
            try:
                await change
            except SinkError as exc:
                raise control.ControlError(f"the kernel refused: {exc}") from None

    def status(self) -> dict[str, object]:
        """The `bans` object of `wrapalert status`."""
        stats = self.stats
        return {
            "active": sum(not b.dry_run for b in self.active.values()),
            "dry_run_active": sum(b.dry_run for b in self.active.values()),
            "added": stats.bans,
            "would_ban": stats.bans_dry_run,
            "refused": dict(stats.bans_refused),
            "expired": stats.bans_expired,
            "lifted": stats.bans_lifted,
            "mode": self.rule.mode if self.sink is not None else None,
            "last_error": self.last_error,
        }
