"""The daemon's lifecycle shell: startup, serve, reload, shutdown, in that fixed order.

Startup: open the state database and restore counters, groups and the
outbox; take the systemd socket or bind one; ingest the spool; then one
TaskGroup runs every sink's worker, the scheduler (daemon/scheduler.py), the
committer, the spool scanner (daemon/spool.py), the heartbeat, the metrics
file (daemon/metrics.py) and the control socket (daemon/api.py).

Serve: intake hands each accepted event to the event pipeline
(pipeline/chain.py: mute -> route -> aggregate -> forward); changed state is
committed every `commit_interval` (group commit) and at once for digests.

Reload (SIGHUP): a new pipeline and a new set of sinks are built from the new
Config and take the old ones' state over, through the same export/restore
path the state database uses. A bad config is refused and the old one kept.

Shutdown (SIGTERM/SIGINT): stop intake (a socket we bound is unlinked and shut
for reading, so later senders spool), read what the kernel already queued
and what is in the spool, flush every group with news, give the sinks
`shutdown_grace` seconds, commit. What is still undelivered stays in the
outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from wrapalert import config as config_mod
from wrapalert import userns
from wrapalert.clock import Clock, SystemClock
from wrapalert.config import Config
from wrapalert.confparse import ConfigError
from wrapalert.daemon import api, metrics, systemd
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.intake import Intake, take_socket
from wrapalert.daemon.ledger import DeliveryHook, Ledger
from wrapalert.daemon.scheduler import Scheduler
from wrapalert.daemon.sinkset import SinkSet
from wrapalert.daemon.spool import Spool
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.daemon.witness import Witness
from wrapalert.pipeline import chain
from wrapalert.scanrule import ScanSignal
from wrapalert.sinks.base import EventSink, Sink

log = structlog.get_logger()

SHUTDOWN_DRAIN = 100_000  # datagrams read at shutdown at most: a flood cannot hold it open
COMMIT_EVERY = 10_000  # events: commit early when a flood fills the window faster
SIGNALS = {signal.SIGTERM: "stop", signal.SIGINT: "stop", signal.SIGHUP: "reload"}
# hostname: digests already in the outbox and alerts already posted carry the old one.
RESTART_ONLY = ("socket", "state_dir", "spool_dir", "control_socket", "socket_mode", "hostname")


class Server:
    """One running daemon. `run` returns after a clean shutdown."""

    def __init__(
        self,
        cfg: Config,
        *,
        sinks: list[Sink | EventSink] | None = None,
        on_delivery: DeliveryHook | None = None,
        now: Callable[[], float] = time.time,
        clock: Clock | None = None,
        config_path: Path | None = None,
    ) -> None:
        # config_path None: the default path, where a missing file means the defaults.
        self.cfg = cfg = _visible(cfg)
        self.config_path = config_path
        self.clock = clock or SystemClock(now)
        self.now = self.clock.now
        self.host = cfg.daemon.hostname
        self.store = Store(cfg.daemon.state_dir, self.now)
        self.ledger = Ledger(self.store, self.clock, on_delivery)
        self.stats: Stats = self.ledger.stats
        self.sinks = self._sinkset(cfg, sinks)
        self.bans = Bans(self.store, self.clock, self.stats)
        self.bans.configure(self.sinks.banner)
        self.witness = Witness(self.stats, self.now)
        self.pipeline = self._pipeline(cfg, self.sinks)
        # A lambda: a reload replaces the pipeline, and with it the aggregator.
        self.ledger.group_changes = lambda: self.pipeline.aggregator.take_changes()  # noqa: PLW0108
        self.commit = self.ledger.commit
        self.scheduler = Scheduler(
            host=self.host,
            clock=self.clock,
            stats=self.stats,
            store=self.store,
            commit=self.commit,
            current=lambda: (self.pipeline, self.sinks),
            banned=self.bans.take_notes,
        )
        self.silences = api.Silences(self.store, self.clock, lambda: self.pipeline.mute.mute)
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._bound: Path | None = None
        self.intake: Intake | None = None
        self.spool: Spool | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- what the control API and tests call -------------------------------

    def stop(self) -> None:
        """Ask for a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    def status(self) -> dict[str, object]:
        aggregator = self.pipeline.aggregator
        return self.stats.as_dict(
            groups=len(aggregator.groups),
            pending_events=aggregator.pending_events,
            outbox=self.sinks.outbox,
            sinks=self.sinks.status(),
            state=self.store.health(),
        ) | {"bans": self.bans.status(), "evidence": self.witness.status()}

    def flush(self) -> int:
        """Report every group with news now, whatever its timer says; how many events."""
        return sum(r.events for r in self.scheduler.collect(force=True, why="flush"))

    async def test_alert(self) -> dict[str, str]:
        # The ban sink's answer is the book's: whether the kernel holds every ban.
        sinks, bans = await asyncio.gather(
            self.sinks.test_alert(self.host, self.now()), self.bans.test_alert()
        )
        return dict(sorted((sinks | bans).items()))

    def reload(self) -> bool:
        """Re-read the config file; apply it, or keep the old one if it is bad."""
        if self._stop.is_set():
            log.warning("reload_ignored", reason="shutting down")
            return False
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = _visible(config_mod.load(self.config_path))
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc), keeping=self.cfg.source)
            systemd.notify("READY=1\nSTATUS=reload refused: config error, old config kept")
            return False
        try:
            self.apply(new)
        except Exception as exc:  # e.g. a template dir a sink cannot read: keep the old
            log.exception("reload_failed", error=str(exc), keeping=self.cfg.source)
            systemd.notify("READY=1\nSTATUS=reload failed, old config kept")
            return False
        systemd.notify("READY=1")
        log.info("reloaded", config=new.source)
        return True

    def apply(self, new: Config) -> None:
        """Run on a validated config: new pipeline and sinks, the old ones' state handed
        over. What only a restart can change is reported and kept."""
        if self._stop.is_set():
            return  # new sink tasks now would keep shutdown waiting for ever
        old = self.cfg
        for key in RESTART_ONLY:
            if getattr(old.daemon, key) != getattr(new.daemon, key):
                log.warning("reload_needs_restart", key=f"daemon.{key}")
        kept = {key: getattr(old.daemon, key) for key in RESTART_ONLY}
        new = replace(new, daemon=replace(new.daemon, **kept))
        self.commit()  # the old pipeline's changes are saved before it hands over
        # Built before anything is handed over: if building fails, the old ones run on.
        sinks = self._sinkset(new, None)
        self.bans.configure(sinks.banner)  # the new pipeline's ban stage follows its rule
        try:
            pipeline = self._pipeline(new, sinks, previous=self.pipeline, previous_cfg=old)
        except Exception:
            self.bans.configure(self.sinks.banner)  # the old pipeline runs on: its rule too
            raise
        if sinks.take_over(self.sinks):
            self.store.stage_retry_failed()
        self.sinks, self.pipeline, self.cfg = sinks, pipeline, new
        if self._tg is not None:
            sinks.start(self._tg)
        if self.intake is not None:
            self.intake.trusted = frozenset(new.daemon.trusted_uids)
            self.intake.accept = pipeline.accept
        self.commit()

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        await self.bans.claim()  # TableInUseError: another wrapalert keeps the ban table
        intake, spool = self._startup()
        ctl: asyncio.Server | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.sinks.start(tg)
                for name, job in (
                    ("scheduler", self.scheduler.run()),
                    ("committer", self.ledger.run(self.cfg.daemon.commit_interval)),
                    ("spool", spool.run(self.cfg.daemon.spool_scan_interval)),
                    ("heartbeat", systemd.heartbeat(self.status, self.clock.sleep)),
                    ("metrics", metrics.run(lambda: self.cfg.metrics, self.status, self.clock)),
                    ("bans", self.bans.run()),
                ):
                    self._tasks[name] = tg.create_task(job, name=name)
                commands = api.handlers(
                    status=self.status,
                    flush=self.flush,
                    test_alert=self.test_alert,
                    silences=self.silences,
                    bans=self.bans,
                )
                ctl = await api.serve(self.cfg.daemon.control_socket, commands)
                loop.add_reader(intake.sock.fileno(), self._drain)
                if handle_signals:
                    for sig, handler in SIGNALS.items():
                        loop.add_signal_handler(sig, getattr(self, handler))
                self.ready.set()
                systemd.notify("READY=1\nSTATUS=listening")
                log.info(
                    "ready",
                    socket=str(self.cfg.daemon.socket),
                    sinks=len(self.sinks.workers),
                    state=str(self.store.path),
                    restored_groups=len(self.pipeline.aggregator.groups),
                )
                await self._stop.wait()
                await self._shutdown(loop, intake, spool, ctl)
        finally:
            if handle_signals:
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)
            if ctl is not None:
                ctl.close()
                with contextlib.suppress(FileNotFoundError):
                    self.cfg.daemon.control_socket.unlink()
            self.commit()
            self.store.close()
            if self.intake is not None:
                self.intake.close(self._bound)
            self.witness.close()
            log.info("stopped", **self.status())

    # -- lifecycle -------------------------------------------------------

    def _startup(self) -> tuple[Intake, Spool]:
        self.store.open()  # StateError (a newer schema) propagates: do not start
        snap, states = self.ledger.load(self.sinks.workers)
        self.pipeline.aggregator.restore(snap.groups)
        self.pipeline.mute.mute.silences = self.silences.load()
        self.bans.load()
        self.sinks.restore(states)
        sock, self._bound = take_socket(self.cfg.daemon.socket, self.cfg.daemon.socket_mode)
        self.intake = Intake(
            sock,
            trusted_uids=self.cfg.daemon.trusted_uids,
            stats=self.stats,
            accept=self.pipeline.accept,
            twins=self.ledger.twins,
            witness=self.witness,
            now=self.now,
        )
        self.spool = Spool(
            self.cfg.daemon.spool_dir,
            intake=self.intake,
            store=self.store,
            commit=self.commit,
            clock=self.clock,
            seen=snap.spool_seen,
        )
        self.spool.ensure()
        self.spool.ingest()
        return self.intake, self.spool

    async def _shutdown(
        self,
        loop: asyncio.AbstractEventLoop,
        intake: Intake,
        spool: Spool,
        ctl: asyncio.Server | None,
    ) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        if ctl is not None:
            ctl.close()
        loop.remove_reader(intake.sock.fileno())
        intake.refuse_new(self._bound)  # from here on, senders spool: nothing queues unread
        self._bound = None  # unlinked: a successor may bind the path while we finish
        intake.drain(limit=SHUTDOWN_DRAIN)  # what the kernel already queued is ours
        for name in ("scheduler", "spool", "heartbeat", "metrics", "bans"):
            self._tasks[name].cancel()
        spool.ingest()
        self.scheduler.collect(force=True, why="shutdown")
        self.sinks.close()
        await self.sinks.wait(self.cfg.daemon.shutdown_grace)
        self._tasks["committer"].cancel()

    # -- parts built from a config -------------------------------------------

    def _sinkset(self, cfg: Config, built: list[Sink | EventSink] | None) -> SinkSet:
        return SinkSet(
            cfg,
            clock=self.clock,
            on_result=self.ledger.delivered,
            on_merge=self.ledger.merged,
            on_forwarded=self.ledger.forwarded,
            built=built,
        )

    def _pipeline(
        self,
        cfg: Config,
        sinks: SinkSet,
        previous: chain.EventPipeline | None = None,
        previous_cfg: Config | None = None,
    ) -> chain.EventPipeline:
        return chain.build(
            cfg,
            forwarders=sinks.forwarders,
            on_due=lambda: self.scheduler.wake(),  # noqa: PLW0108 - made before the scheduler
            on_muted=self.ledger.muted,
            on_scan=self._scan_found,
            previous=previous,
            previous_scan=previous_cfg.scan if previous_cfg else None,
            ban=self.bans.stage(cfg.scan.rule if cfg.scan.enabled else None),
        )

    # -- events and state ----------------------------------------------------

    def _scan_found(self, found: ScanSignal) -> None:
        # Not a ban: the detector sees every trusted report, forged UDP ones too; the ban
        # stage finds scans of its own among the kernel-vouched ones (pipeline/ban.py).
        self.ledger.scan_found(found)
        self.sinks.scan(found)  # the sinks in force: a reload replaces them

    def _drain(self) -> None:
        assert self.intake is not None  # noqa: S101 - the reader exists only after startup
        ledger = self.ledger
        ledger.since_commit += self.intake.drain()
        if ledger.since_commit >= COMMIT_EVERY:
            ledger.commit()


def _visible(cfg: Config) -> Config:
    """`cfg`, if this daemon can tell each of its trusted uids apart (userns.py): in a
    user namespace that hides one, that uid's reports would pass for untrusted."""
    problem = userns.check_trusted(cfg.daemon.trusted_uids)
    if problem is not None:
        raise ConfigError(f"{cfg.source}: {problem}")
    return cfg
