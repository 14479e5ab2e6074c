"""The ban book: which sources are banned, why and until when; the kernel kept in step.

Requests come from the ban stage (a source past the threshold, or one address
refused by several daemons: a scan; both counted from reports the kernel
vouches for only, pipeline/ban.py) and from `wrapalert ban add|del|flush`
(through the control API, daemon/api.py). The policy (daemon/banpolicy.py)
decides; the book records what it decided: every ban, refusal, expiry and
lifting is staged in the state database (tables `bans` and `ban_log`,
committed with the next group commit), counted in Stats, logged, and noted for
the next digest's "Banned" section. In dry-run mode a ban is recorded as one
that would have been made and nothing reaches the kernel.

The kernel side (daemon/bankernel.py, the only part that calls the sink):
automatic bans are queued and carried out by `run` in one nft transaction per
batch; bans by hand wait for their own transaction, so `ban del` frees the
address when it returns. `run` reconciles the kernel with the book at start (a
restart with the table kept, or a reboot that emptied the ruleset: the same
path), every `reconcile` seconds and after every failed change (retried with
the shared backoff, at most `reconcile` apart): a flushed ruleset, a deleted
table, a missing or extra element comes back as the book says. While bans the
book holds are not in the kernel, `status` says so (and `wrapalert status`
exits 1), `test-alert` fails for the sink, and the next digest says it.
Without a usable state database the bans the kernel still holds are adopted.

The fleet (daemon/fleetbook.py keeps its pages): every ban of this host's own
is noted for the fleet's poster (daemon/fleet.py), its lifting too; `follow`
takes the fleet's bans as the peers last said them, bans each through the
policy's checks (origin "fleet", reason "fleet: banned on H1, H2"), and lifts
the fleet bans the fleet no longer holds. A fleet ban lifted by hand stays
lifted while that fleet ban lasts. Fleet bans are saved like the others (their
reason names their hosts) and counted apart (status `bans.fleet`).

Bounded, written down: the policy's bounds (bans, refusals remembered), at
most NOTES_MAX notes wait for a digest, the rest counted in one "more" note, and
at most FOLLOW_BATCH fleet bans new to this host are decided per look (the
shield is read for each: ~0.1 ms), the rest at the next looks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.bankernel import KernelSync
from wrapalert.daemon.banpolicy import Ban, BanPolicy, BanRefusedError, Guard, Refusal
from wrapalert.daemon.control import TEST_ALERT_BUDGET
from wrapalert.daemon.fleetbook import FleetBook
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.fleetwire import View, hosts_of
from wrapalert.model import BanNote
from wrapalert.pipeline.retry import Backoff
from wrapalert.shield import Shield
from wrapalert.sinks.base import BanSink, SinkError

log = structlog.get_logger()

NOTES_MAX = 100
FOLLOW_BATCH = 1000  # fleet bans new to this host decided per look (each asks the shield)
STATUS_BUDGET = 2.0  # seconds `status` waits for the kernel's answer, else says the last one


class Bans:
    """Owns the ban book; `run` is its task (kernel changes, reconciling, expiry)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        stats: Stats,
        backoff: tuple[float, float] = (1.0, 60.0),
        shield: Guard | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.backoff = Backoff(*backoff)
        self.policy = BanPolicy(shield or Shield())
        self.kernel = KernelSync(store, stats)
        self.fleet = FleetBook(store)
        self.notes: list[BanNote] = []
        self.more_notes = 0
        self.last_error: str | None = None
        self._to_add: dict[str, float] = {}  # target -> until, queued for the kernel
        self._to_delete: set[str] = set()  # targets queued to leave the kernel
        self._reconcile_at = 0.0  # clock time of the next reconcile (0: at once)
        self._noted_unenforced = 0  # bans a digest note said the kernel does not drop
        self._wake = asyncio.Event()

    @property
    def sink(self) -> BanSink | None:
        """The ban sink in force (None: bans are neither made nor lifted)."""
        return self.kernel.sink

    @property
    def mode(self) -> str | None:
        return self.policy.rule.mode if self.sink is not None else None

    # -- configuration ------------------------------------------------------------

    def configure(self, sink: BanSink | None) -> None:
        """The ban sink in force (None: bans are neither made nor lifted; those in the
        kernel keep their expiry). A new table gets the bans, then the old one goes."""
        self.kernel.configure(sink)
        if sink is not None:
            self.policy.rule = sink.rule
            self.fleet.reset_refusals()  # the fleet's bans meet the new rule afresh
            self._lift_forbidden()  # the new allowlist holds for bans in force too
        self._reconcile_at = 0.0  # a new or reloaded sink: compare with the kernel at once
        self._wake.set()

    def load(self) -> None:
        """The bans the state database holds (at start, before any event is accepted), the
        notes on them no digest has carried yet, and the tables used before."""
        self.kernel.load()
        self.fleet.load()
        now = self.clock.now()
        self.notes, self.more_notes = self.store.ban_notes()
        for row in self.store.bans():
            hosts = hosts_of(row.reason)  # a fleet ban's reason names its hosts
            origin = "local" if hosts is None else "fleet"
            ban = Ban(
                row.target, row.reason, row.since, row.until, row.dry_run, origin, hosts or ()
            )
            if ban.until <= now:
                self._expired(ban, now, note="expired while wrapalert was stopped")
            else:
                self.policy.record(ban)
                self.fleet.published(ban)  # the peers hear of it again (a fleet ban: not)
        self._lift_forbidden()

    def _lift_forbidden(self) -> None:
        now = self.clock.now()
        for ban, why in self.policy.forbidden():
            self.policy.lift(ban.target)
            self._lifted(ban, now, why)

    # -- automatic bans -------------------------------------------------------------

    def request(self, target: str, reason: str, now: float) -> None:
        """An automatic ban (the ban stage's): made, refused, or in dry-run noted."""
        if self.sink is None:
            return
        decision = self.policy.decide(target, reason, now)
        if isinstance(decision, Refusal):
            self._refused(decision, now)
        elif decision is not None:
            self._recorded(decision, now)
            if not decision.dry_run:
                self._to_add[target] = decision.until
                self._wake.set()

    # -- what the book records --------------------------------------------------------

    def _refused(self, refusal: Refusal, now: float) -> None:
        why = refusal.why
        self.stats.bans_refused[why] += 1
        self.store.stage_ban_log(now, f"refused: {why}", refusal.target, refusal.reason, None)
        detail = f" ({refusal.detail})" if refusal.detail and why == "session" else ""
        reason = f"{refusal.reason}; {why}{detail}"
        self._note(BanNote("refused", refusal.target, reason, refusal.until))
        log.warning(
            "ban_refused",
            target=refusal.target,
            reason=refusal.reason,
            why=why,
            detail=refusal.detail,
        )

    def _recorded(self, ban: Ban, now: float) -> None:
        action = "would ban" if ban.dry_run else "banned"
        if ban.dry_run:
            self.stats.bans_dry_run += 1
        elif ban.origin == "fleet":
            self.stats.fleet_bans += 1
        else:
            self.stats.bans += 1
        self._to_delete.discard(ban.target)
        self.store.stage_ban(ban.target, ban.reason, ban.since, ban.until, dry_run=ban.dry_run)
        self.store.stage_ban_log(now, action, ban.target, ban.reason, ban.until)
        self._note(BanNote(action, ban.target, ban.reason, ban.until))
        self.fleet.published(ban)
        log.warning(
            "ban_followed" if ban.origin == "fleet" else "ban_added",
            target=ban.target,
            reason=ban.reason,
            until=round(ban.until, 3),
            dry_run=ban.dry_run,
        )

    def _lifted(self, ban: Ban, now: float, why: str, *, by_hand: bool = False) -> None:
        self._to_add.pop(ban.target, None)
        if ban.origin == "fleet" and not by_hand:
            self.stats.fleet_ended += 1
        else:
            self.stats.bans_lifted += 1
        self.fleet.lifted(ban, now)
        self.store.stage_unban(ban.target)
        self.store.stage_ban_log(now, "lifted", ban.target, why, None)
        # A fleet ban's note names its hosts (and the digest shows it with the fleet's).
        said = why if ban.origin == "local" else f"{ban.reason}; {why}"
        self._note(BanNote("lifted", ban.target, said, now))
        log.info("ban_lifted", target=ban.target, why=why)

    def _expired(self, ban: Ban, now: float, note: str = "expired") -> None:
        if ban.origin == "fleet":
            self.stats.fleet_ended += 1
        else:
            self.stats.bans_expired += 1
        self.fleet.expired(ban)
        self.store.stage_unban(ban.target)
        self.store.stage_ban_log(now, "expired", ban.target, ban.reason, ban.until)
        self._note(BanNote("expired", ban.target, ban.reason, ban.until))
        log.info("ban_expired", target=ban.target, reason=ban.reason, note=note)

    def _note(self, note: BanNote) -> None:
        if len(self.notes) < NOTES_MAX:
            self.notes.append(note)
        else:
            self.more_notes += 1
        self.store.stage_ban_notes(self.notes, self.more_notes)

    def take_notes(self) -> tuple[BanNote, ...]:
        """What happened to bans since the last digest (the digest's "Banned" section)."""
        notes = list(self.notes)
        if self.more_notes:
            notes.append(BanNote("more", str(self.more_notes), "", 0.0))
        if notes:
            self.notes, self.more_notes = [], 0
            self.store.stage_ban_notes([], 0)  # committed with the digest that carries them
        return tuple(notes)

    def _expire_due(self) -> None:
        now = self.clock.now()
        for ban in self.policy.due(now):
            self._expired(ban, now)

    # -- bans by hand (the control API's) ----------------------------------------------

    def in_force(self) -> list[Ban]:
        """The bans in force (dry-run ones too), soonest to end first."""
        self._expire_due()
        return sorted(self.policy.active.values(), key=lambda b: b.until)

    async def add(self, text: str, seconds: float | None, *, force: bool) -> Ban:
        """`ban add`: in the kernel when this returns (BanRefusedError: why not)."""
        self._require_sink()
        now = self.clock.now()
        ban = self.policy.by_hand(text, seconds, now, force=force)
        if not ban.dry_run:
            await self._by_hand(self.kernel.add({ban.target: ban.until - ban.since}))
        self.policy.record(ban)
        self._recorded(ban, now)
        self.store.commit()
        self._wake.set()  # its expiry may be the soonest
        return ban

    async def remove(self, text: str) -> str:
        """`ban del`: out of the kernel when this returns; the target."""
        self._require_sink()
        target = self.policy.target(text, force=True)  # any ban in force may be lifted
        ban = self.policy.active.get(target)
        if ban is None:
            raise BanRefusedError(f"{target} is not banned")
        if not ban.dry_run:
            await self._by_hand(self.kernel.delete([target]))
        self.policy.lift(target)
        self._lifted(ban, self.clock.now(), "by hand (wrapalert ban del)", by_hand=True)
        if ban.origin == "fleet":
            self.fleet.except_(ban)  # not followed again while that fleet ban lasts
        self.store.commit()
        return target

    async def flush(self) -> int:
        """`ban flush`: every ban lifted; how many."""
        self._require_sink()
        if not self.policy.rule.dry_run:
            await self._by_hand(self.kernel.flush())
        now = self.clock.now()
        lifted = list(self.policy.active.values())
        for ban in lifted:
            self.policy.lift(ban.target)
            self._lifted(ban, now, "by hand (wrapalert ban flush)", by_hand=True)
            if ban.origin == "fleet":
                self.fleet.except_(ban)
        self.store.commit()
        return len(lifted)

    def _require_sink(self) -> None:
        if self.sink is None:
            raise BanRefusedError("no nftables sink is configured")

    async def _by_hand(self, change: Awaitable[None]) -> None:
        try:
            await change
        except SinkError as exc:
            self._reconcile_at = 0.0  # compare and repair at once
            self._wake.set()
            raise BanRefusedError(f"the kernel refused: {exc}") from None

    # -- the fleet's bans (daemon/fleet.py) ---------------------------------------------

    def follow(self, view: View, now: float) -> None:
        """The fleet's bans as the peers said them just now: each one this host does not
        hold yet is banned, or refused by this host's rules; fleet bans the fleet no longer
        holds are lifted. A no-op unless the rule in force follows the fleet."""
        if self.sink is None or not self.policy.rule.follow:
            return
        self.fleet.forget(view, now)
        self._unfollow(view, now)
        self._refuse_wide(view, now)
        news = 0  # targets not banned here yet: each costs a look at the shield
        for target, fleet_ban in view.bans.items():
            if self.fleet.excepted(target, fleet_ban) or self.fleet.remembered(target, now):
                continue
            if target not in self.policy.active:
                if news >= FOLLOW_BATCH:
                    continue  # the next look takes the rest: the event loop is not held
                news += 1
            decision = self.policy.follow(
                target, fleet_ban.hosts, fleet_ban.until, now, more=fleet_ban.more
            )
            if isinstance(decision, Refusal):
                self._refused_fleet(decision, now)
            elif decision is not None:
                self._followed(decision, now)
        if self._to_add or self._to_delete:
            self._wake.set()

    def _refuse_wide(self, view: View, now: float) -> None:
        """Networks the fleet banned that this host's rule would not ban unforced."""
        for addr, fleet_ban in view.wide.items():
            if not self.fleet.remembered(addr, now):
                why = "wider than this host bans without --force"
                refusal = Refusal(addr, fleet_ban.reason, "wide", why, fleet_ban.until)
                self._refused_fleet(refusal, now)

    def _unfollow(self, view: View, now: float) -> None:
        """Lift the fleet bans the fleet no longer holds (resolved, ended, or no longer
        from enough of the hosts this host follows)."""
        for target in [t for t in self.policy.followed if t not in view.bans]:
            ban = self.policy.lift(target)
            if ban is not None:
                self._lifted(ban, now, "the fleet lifted it")
                if not ban.dry_run:
                    self._to_delete.add(target)

    def _followed(self, ban: Ban, now: float) -> None:
        known = self.policy.active.get(ban.target)
        self.policy.record(ban)
        if known is None:
            self._recorded(ban, now)
        else:  # the same fleet ban, other hosts or another end: no news for the digest
            self.store.stage_ban(ban.target, ban.reason, ban.since, ban.until, dry_run=ban.dry_run)
            log.info("ban_fleet_changed", target=ban.target, hosts=list(ban.hosts))
        if not ban.dry_run and (known is None or known.until != ban.until):
            self._to_add[ban.target] = ban.until

    def _refused_fleet(self, refusal: Refusal, now: float) -> None:
        self.fleet.remember(refusal, self.policy.rule.window, now)
        self.stats.fleet_refused[refusal.why] += 1
        self.store.stage_ban_log(
            now, f"refused: {refusal.why}", refusal.target, refusal.reason, None
        )
        self._note(BanNote("refused", refusal.target, f"{refusal.reason}; {refusal.why}", now))
        log.warning(
            "ban_fleet_refused",
            target=refusal.target,
            reason=refusal.reason,
            why=refusal.why,
            detail=refusal.detail,
        )

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
            if sink is not None and not self.policy.rule.dry_run:
                try:
                    due = self.clock.now() >= self._reconcile_at or not self.kernel.synced
                    if not due:
                        await self._apply_queued()  # the fast path: no listing
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
            soonest = self.policy.soonest()
            if soonest is not None:
                wait = max(0.0, soonest - self.clock.now()) + 0.01
                delay = wait if delay is None else min(delay, wait)
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    def _settled_bans(self) -> dict[str, float]:
        """The bans the kernel must hold by now: not those queued for the next batch
        (unless the kernel refused the last change: then every ban counts)."""
        want = self.policy.kernel_bans()
        if self.last_error is not None:
            return want
        return {t: until for t, until in want.items() if t not in self._to_add}

    async def _reconcile(self, sink: BanSink) -> None:
        now = self.clock.now()
        if self.store.error is not None and not self.kernel.synced:
            # No state to trust: the kernel's word stands.
            self.policy.adopt(await self.kernel.read_bans(), now)
        want = self.policy.kernel_bans()
        queued = dict(self._to_add)
        drift = await self.kernel.reconcile(want, now)
        for target, until in queued.items():
            if self._to_add.get(target) == until:  # in `want`, so in the kernel now
                del self._to_add[target]
        self._reconcile_at = self.clock.now() + sink.reconcile
        if drift.changed and self.kernel.synced and drift.unenforced:
            self._note(BanNote("repaired", sink.table, drift.summary(), now))

    async def _apply_queued(self) -> None:
        if not self._to_add and not self._to_delete:
            return
        now = self.clock.now()
        batch = dict(self._to_add)
        gone = set(self._to_delete) - set(batch)
        adds = {t: until - now for t, until in batch.items() if until > now}
        await self.kernel.change(adds, gone)
        self._to_delete -= gone
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
            self._note(BanNote("unenforced", f"{missing} ban(s)", str(exc), self.clock.now()))

    async def refresh(self) -> None:
        """Compare the kernel with the book now (`wrapalert status` asks this first, so it
        tells what the kernel holds, not what it held at the last reconcile); bans found
        missing are repaired at once. Within STATUS_BUDGET, else the last answer stands."""
        if self.sink is None or self.policy.rule.dry_run or not self.kernel.synced:
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
                if self.policy.rule.dry_run:
                    await self.kernel.probe()
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

    def status(self) -> dict[str, object]:
        """The `bans` object of `wrapalert status`."""
        stats = self.stats
        active = self.policy.active.values()
        enforcing = self.sink is not None and not self.policy.rule.dry_run
        followed = [self.policy.active[t] for t in self.policy.followed]
        fleet = self.fleet.status(followed) | {
            "added": stats.fleet_bans,
            "ended": stats.fleet_ended,
            "refused": dict(stats.fleet_refused),
            "follow": self.policy.rule.follow,
        }
        return {
            "active": sum(not b.dry_run for b in active),
            "dry_run_active": sum(b.dry_run for b in active),
            "added": stats.bans,
            "would_ban": stats.bans_dry_run,
            "refused": dict(stats.bans_refused),
            "expired": stats.bans_expired,
            "lifted": stats.bans_lifted,
            "mode": self.mode,
            "last_error": self.last_error,
            "kernel": self.kernel.status() if enforcing else None,
            "fleet": fleet if self.sink is not None else None,
        }
