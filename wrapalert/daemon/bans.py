"""The ban book: which sources are banned, why and until when; the kernel kept in step.

Decisions come from the ban stage (a source past the threshold, or one
address refused by several daemons: a scan; both counted from reports the
kernel vouches for only, pipeline/ban.py) and from `wrapalert ban add`.
Each is checked here against the rule: an allowlisted target, one of this
host's addresses or a logged-in session's peer (read afresh at each
decision: shield.py) or a full book (`max_bans`) is refused, and the
refusal recorded; in dry-run mode the ban is recorded as one that would
have been made and nothing reaches the kernel. Every ban, refusal, expiry
and lifting is staged in the state database (tables `bans` and `ban_log`,
committed with the next group commit), counted in Stats, logged, and noted
for the next digest's "Banned" section.

The kernel side (daemon/bankernel.py): automatic bans are queued and carried
out by `run` in one nft transaction per batch; `ban add|del|flush` wait for
their own transaction, so `ban del` frees the address when it returns.
`run` reconciles the kernel with the book at start (a restart with the table
kept, or a reboot that emptied the ruleset: the same path), every
`reconcile` seconds and after every failed change (retried with the shared
backoff, at most `reconcile` apart): a flushed ruleset, a deleted table, a
missing or extra element comes back as the book says. While bans the book
holds are not in the kernel, `status` says so (and `wrapalert status` exits
1), `test-alert` fails for the sink, and the next digest says it. Without a
usable state database the bans the kernel still holds are adopted instead.

Bounded, written down: at most `max_bans` bans; refusals are remembered
(so a refused source is not re-examined at every threshold) for at most
MAX_REFUSED targets; at most NOTES_MAX notes wait for a digest, the rest
are counted in one "more" note.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import structlog

from wrapalert.banrule import SHARED_PREFIXES, BanRule, BanTargetError
from wrapalert.clock import Clock
from wrapalert.daemon import control
from wrapalert.daemon.bankernel import KernelSync
from wrapalert.daemon.sinkset import TEST_ALERT_BUDGET
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.pipeline.ban import BanStage
from wrapalert.pipeline.retry import Backoff
from wrapalert.scanrule import ScanRule
from wrapalert.shield import Protected, Shield
from wrapalert.sinks.base import BanSink, SinkError

log = structlog.get_logger()

MAX_REFUSED = 16_384
NOTES_MAX = 100
MAX_MANUAL = 366 * 86400.0  # seconds: `ban add --for` at most a year
STATUS_BUDGET = 2.0  # seconds `status` waits for the kernel's answer, else says the last one
# One note for the digest: (action, target, reason, until). Actions: "banned",
# "would ban" (dry-run), "refused", "expired", "lifted", "unenforced" (target = how many
# bans the kernel does not drop, reason = why), "repaired" (target = the table, reason =
# what was wrong), and "more" (target = a count).
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
    """Owns the active bans; `run` is its task (kernel changes, reconciling, expiry)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        stats: Stats,
        backoff: tuple[float, float] = (1.0, 60.0),
        shield: Shield | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.backoff = Backoff(*backoff)
        self.shield = shield or Shield()
        self.kernel = KernelSync(store, stats)
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
        self._reconcile_at = 0.0  # clock time of the next reconcile (0: at once)
        self._noted_unenforced = 0  # bans a digest note said the kernel does not drop
        self._stage: BanStage | None = None
        self._wake = asyncio.Event()

    # -- configuration ------------------------------------------------------------

    def configure(self, sink: BanSink | None) -> None:
        """The ban sink in force (None: bans are neither made nor lifted; those in the
        kernel keep their expiry). A new table gets the bans, then the old one goes."""
        self.kernel.configure(sink)
        self.sink = sink
        if sink is not None:
            self.rule = sink.rule
            self._lift_forbidden()  # the new allowlist holds for bans in force too
        self._reconcile_at = 0.0  # a new or reloaded sink: compare with the kernel at once
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
        """The bans the state database holds (at start, before any event is accepted), the
        notes on them no digest has carried yet, and the tables used before."""
        self.kernel.load()
        now = self.clock.now()
        self.notes, self.more_notes = self.store.ban_notes()
        for target, reason, since, until, dry_run in self.store.bans():
            ban = Ban(target, reason, since, until, dry_run)
            if until <= now:
                self._expire(ban, now, note="expired while wrapalert was stopped")
                continue
            self.active[target] = ban
            self.settled[target] = until
        self._lift_forbidden()

    def _lift_forbidden(self) -> None:
        """Lift bans the rule in force would not make: targets allowlisted since (an entry
        added, then a restart or reload), and automatic bans of a network of shared
        addresses (a NAT64 /64 an earlier version made: every translated client)."""
        now = self.clock.now()
        for ban in list(self.active.values()):
            if self.rule.allowed(ban.target):
                self._lift(ban, now, "allowlisted")
            elif ban.reason != "by hand" and self._shared_network(ban.target):
                self._lift(ban, now, "a network of NAT64, Teredo or 6to4 addresses")

    @staticmethod
    def _shared_network(target: str) -> bool:
        net = ipaddress.ip_network(target, strict=False)
        if isinstance(net, ipaddress.IPv4Network) or net.prefixlen == 128:
            return False
        return any(net.overlaps(p) for p in SHARED_PREFIXES)

    # -- decisions ----------------------------------------------------------------

    def request(self, target: str, reason: str, now: float) -> None:
        """An automatic ban (from the stage or a scan): made, refused, or in dry-run noted."""
        if self.sink is None or target in self.active:
            return
        rule = self.rule
        refusal = self._refusal(target)
        if refusal is not None:
            self._refuse(target, reason, refusal, now)
            return
        self._record(Ban(target, reason, now, now + rule.ban_for, rule.dry_run), now)
        if not rule.dry_run:
            self._to_add[target] = now + rule.ban_for
            self._wake.set()

    def _refusal(self, target: str) -> Protected | None:
        if self.rule.allowed(target):
            return Protected("allowlisted", "")
        protected = self.shield.check(target)
        if protected is not None:
            return protected
        if len(self.active) >= self.rule.max_bans:
            return Protected("cap", f"max_bans {self.rule.max_bans}")
        return None

    def _refuse(self, target: str, reason: str, refusal: Protected, now: float) -> None:
        why = refusal.why
        self.stats.bans_refused[why] += 1
        # Cap and session: looked at again after a window (a slot may free, the session may
        # end); allowlisted: after ban_for.
        until = now + (self.rule.ban_for if why == "allowlisted" else self.rule.window)
        if len(self.refused) >= MAX_REFUSED:
            oldest = next(iter(self.refused))
            del self.refused[oldest]
            self.settled.pop(oldest, None)
        self.refused[target] = until
        self.settled[target] = until
        self.store.stage_ban_log(now, f"refused: {why}", target, reason, None)
        detail = f" ({refusal.detail})" if refusal.detail and why == "session" else ""
        self._note(("refused", target, f"{reason}; {why}{detail}", until))
        log.warning("ban_refused", target=target, reason=reason, why=why, detail=refusal.detail)

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

    async def claim(self) -> None:
        """At start, before any event: refuse a table another running wrapalert keeps
        (bankernel.TableInUseError ends the start)."""
        await self.kernel.claim()

    async def run(self) -> None:
        """Keep the kernel in step: reconcile at start, then every `reconcile` seconds and
        after each failure; carry out queued bans; expire."""
        following = self.backoff.pauses()
        while True:
            delay: float | None = None
            sink = self.sink
            if sink is not None and not self.rule.dry_run:
                try:
                    due = self.clock.now() >= self._reconcile_at or not self.kernel.synced
                    if not due:
                        await self._apply_queued(sink)  # the fast path: no listing
                    else:
                        await self._reconcile(sink)  # queued bans included
                    self._kernel_ok()
                    following = self.backoff.pauses()
                except SinkError as exc:
                    pause = min(following(), sink.reconcile)
                    self._kernel_failed(exc, pause)
                    # The next try, after the pause, compares and repairs everything.
                    self._reconcile_at = self.clock.now() + pause
                delay = max(0.0, self._reconcile_at - self.clock.now())
            self._expire_due()
            soonest = min(self.settled.values(), default=None)
            if soonest is not None:
                wait = max(0.0, soonest - self.clock.now()) + 0.01
                delay = wait if delay is None else min(delay, wait)
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    def _want(self) -> dict[str, float]:
        """The bans the kernel must hold: target -> until."""
        return {b.target: b.until for b in self.active.values() if not b.dry_run}

    def _settled_bans(self) -> dict[str, float]:
        """The bans the kernel must hold by now: not those queued for the next batch
        (unless the kernel refused the last change: then every ban counts)."""
        want = self._want()
        if self.last_error is not None:
            return want
        return {t: until for t, until in want.items() if t not in self._to_add}

    async def _reconcile(self, sink: BanSink) -> None:
        now = self.clock.now()
        if self.store.error is not None and not self.kernel.synced:
            self._adopt(await self.kernel.read_bans(), now)  # no state to trust: the kernel's
        want = self._want()
        queued = dict(self._to_add)
        drift = await self.kernel.reconcile(want, now)
        for target, until in queued.items():
            if self._to_add.get(target) == until:  # in `want`, so in the kernel now
                del self._to_add[target]
        self._reconcile_at = self.clock.now() + sink.reconcile
        if drift.changed and self.kernel.synced and drift.unenforced:
            self._note(("repaired", sink.table, drift.summary(), now))

    def _adopt(self, found: dict[str, float], now: float) -> None:
        for target, left in found.items():
            if target not in self.active:
                ban = Ban(target, "found in the kernel", now, now + left)
                self.active[target] = ban
                self.settled[target] = ban.until

    async def _apply_queued(self, sink: BanSink) -> None:
        if not self._to_add:
            return
        now = self.clock.now()
        batch = dict(self._to_add)
        await self.kernel.change(
            sink.apply({t: until - now for t, until in batch.items() if until > now})
        )
        for target, until in batch.items():
            if self._to_add.get(target) == until:  # not renewed meanwhile
                del self._to_add[target]

    def _kernel_ok(self) -> None:
        if self.last_error is not None:
            log.info("ban_kernel_recovered", table=self.sink.table if self.sink else None)
        self.last_error = None
        self._noted_unenforced = 0

    def _kernel_failed(self, exc: SinkError, delay: float) -> None:
        self.last_error = str(exc)
        log.error("ban_kernel_failed", error=str(exc), retry_in=round(delay, 3))
        missing = self.kernel.missing
        if missing > self._noted_unenforced:  # when it starts or grows, not at every retry
            self._noted_unenforced = missing
            self._note(("unenforced", f"{missing} ban(s)", str(exc), self.clock.now()))

    async def refresh(self) -> None:
        """Compare the kernel with the book now (`wrapalert status` asks this first, so it
        tells what the kernel holds, not what it held at the last reconcile); bans found
        missing are repaired at once. Within STATUS_BUDGET, else the last answer stands."""
        sink = self.sink
        if sink is None or self.rule.dry_run or not self.kernel.synced:
            return
        try:
            async with self.clock.timeout(STATUS_BUDGET):
                drift = await self.kernel.check(self._settled_bans(), self.clock.now())
        except (SinkError, TimeoutError) as exc:
            log.warning("ban_kernel_check_failed", error=str(exc) or "timeout")
            return
        if drift.changed or drift.marker:
            self._reconcile_at = 0.0
            self._wake.set()

    async def test_alert(self) -> dict[str, str]:
        """The ban sink's answer to `wrapalert test-alert`: "delivered" when the kernel
        holds every ban of the book, else why not."""
        sink = self.sink
        if sink is None:
            return {}
        try:
            async with self.clock.timeout(TEST_ALERT_BUDGET):
                if self.rule.dry_run:
                    await sink.send_records([])
                    return {sink.name: "delivered"}
                drift = await self.kernel.check(self._settled_bans(), self.clock.now())
        except SinkError as exc:
            return {sink.name: f"failed: {exc}"}
        except TimeoutError:
            return {sink.name: f"no answer within {TEST_ALERT_BUDGET:g}s"}
        if drift.unenforced or drift.table_missing or drift.declaration:
            self._reconcile_at = 0.0
            self._wake.set()
            return {
                sink.name: f"failed: {drift.unenforced} ban(s) not enforced in the kernel "
                f"({drift.summary()}); repairing"
            }
        return {sink.name: "delivered"}

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

    def _target(self, text: object, *, force: bool = False) -> str:
        if not isinstance(text, str):
            raise control.ControlError("name an address, e.g. 203.0.113.7")
        try:
            return self.rule.parse_target(text, force=force)
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
        force = req.get("force", False) is True
        target = self._target(req.get("addr"), force=force)
        seconds = req.get("seconds", self.rule.ban_for)
        # JSON true is an int to Python: a duration must be a number, never a boolean.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise control.ControlError("a ban's duration is a number of seconds")
        if not 0 < seconds <= MAX_MANUAL:
            raise control.ControlError("a ban lasts more than 0 seconds and at most a year")
        if self.rule.allowed(target):
            raise control.ControlError(f"{target} is allowlisted: it is never banned")
        protected = self.shield.check(target)
        if protected is not None and (protected.why != "session" or not force):
            hint = (
                " (--force bans it: the session goes on, established connections pass a ban)"
                if protected.why == "session"
                else ""
            )
            raise control.ControlError(f"{target} holds {protected.detail}{hint}")
        if target not in self.active and len(self.active) >= self.rule.max_bans:
            raise control.ControlError(f"max_bans ({self.rule.max_bans}) reached")
        now = self.clock.now()
        ban = Ban(target, "by hand", now, now + float(seconds), self.rule.dry_run)
        if not ban.dry_run:
            await self._kernel_change(sink.apply({target: float(seconds)}))
        self._record(ban, now)
        self.store.commit()
        self._wake.set()  # its expiry may be the soonest
        return ban.as_dict()

    async def api_del(self, req: dict[str, Any]) -> dict[str, Any]:
        sink = self._require_sink()
        target = self._target(req.get("addr"), force=True)  # any ban in force may be lifted
        ban = self.active.get(target)
        if ban is None:
            raise control.ControlError(f"{target} is not banned")
        if not ban.dry_run:
            await self._kernel_change(sink.apply({}, [target]))
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
        try:
            await self.kernel.change(change)
        except SinkError as exc:
            self._reconcile_at = 0.0  # compare and repair at once
            self._wake.set()
            raise control.ControlError(f"the kernel refused: {exc}") from None

    def status(self) -> dict[str, object]:
        """The `bans` object of `wrapalert status`."""
        stats = self.stats
        enforcing = self.sink is not None and not self.rule.dry_run
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
            "kernel": self.kernel.status() if enforcing else None,
        }
