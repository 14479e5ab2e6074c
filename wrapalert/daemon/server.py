"""The daemon: its composition root and its lifecycle shell.

`Server` builds each long-lived part once: the state database, the ledger
(counters, the refusals already counted, who reported them, each recent source
for explain, the group changes to commit), the silence book, the ban book, the
witness and the explainer (`wrapalert explain`, daemon/explain.py); and the first
runtime (sinks, pipeline, scheduler: daemon/runtime.py), which the reloader
holds and a reload replaces whole (daemon/reload.py); then the alarm's watch
over itself: the post (notices to the sinks in force, daemon/notices.py), the
alarm book (daemon/alarm.py), the canary book (daemon/canaries.py), the hook
watch (daemon/hookwatch.py) and the quiet watch (daemon/quiet.py).

`run` starts the parts in this order on one exit stack, and stops them in the
reverse order (each step's stop is written beside its start):

  1. the ban table claimed (another running wrapalert's: no start)
  2. the state database: counters, groups, outboxes, silences, bans restored
     (stop: a last commit; a newer schema: no start)
  3. the notify socket, systemd's or bound (stop: closed, ours unlinked)
  4. the spool ingested: what senders wrote while we were down
  5. one TaskGroup, and in it: the signal handlers; the committer (group commit
     every `commit_interval`); the runtime's sink workers and digest timer
     (stop: every group with news flushed, `shutdown_grace` for the sinks);
     the chores: spool scanner, heartbeat, metrics file, ban reconciler, the
     post, the alarm's refresh, the hook watch, the quiet watch (stop: the
     spool read once more); the socket's reader (stop: the socket closed to
     new senders, who spool from then on, and what the kernel queued read); the
     control socket (stop: closed first, so no command meets a half-stopped
     daemon).

What is still undelivered at the end stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from wrapalert.clock import Clock, SystemClock
from wrapalert.config import Config
from wrapalert.daemon import api, metrics, systemd
from wrapalert.daemon.alarm import Alarm
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.canaries import Canaries
from wrapalert.daemon.explain import Explainer
from wrapalert.daemon.hookwatch import HookWatch
from wrapalert.daemon.intake import Intake, take_socket
from wrapalert.daemon.ledger import DeliveryHook, Ledger
from wrapalert.daemon.notices import Post
from wrapalert.daemon.quiet import QuietWatch
from wrapalert.daemon.reload import Reloader, checked
from wrapalert.daemon.runtime import Runtime, RuntimeBuilder
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.spool import Spool
from wrapalert.daemon.store import Store
from wrapalert.daemon.witness import Witness
from wrapalert.hostsdeny import line_command
from wrapalert.sinks.base import Built

log = structlog.get_logger()

SHUTDOWN_DRAIN = 100_000  # datagrams read at shutdown at most: a flood cannot hold it open


class Server:
    """One running daemon. `run` returns after a clean shutdown."""

    def __init__(
        self,
        cfg: Config,
        *,
        sinks: list[Built] | None = None,
        on_delivery: DeliveryHook | None = None,
        clock: Clock | None = None,
        config_path: Path | None = None,
    ) -> None:
        cfg = checked(cfg)
        # config_path None: the default path, where a missing file means the defaults.
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.store = Store(cfg.daemon.state_dir, self.clock.now)
        self.ledger = Ledger(self.store, self.clock, on_delivery)
        self.stats = self.ledger.stats
        self.silences = Silences(self.store, self.clock)
        self.bans = Bans(self.store, self.clock, self.stats)
        self.witness = Witness(self.stats, self.clock.now)
        builder = RuntimeBuilder(
            clock=self.clock, ledger=self.ledger, silences=self.silences, bans=self.bans
        )
        first = builder.build(cfg, built=sinks)
        self.reloader = Reloader(builder, first, ledger=self.ledger, bans=self.bans)
        self.explainer = Explainer(
            sightings=self.ledger.sightings,
            bans=self.bans,
            silences=self.silences,
            runtimes=self.reloader,
            clock=self.clock,
        )
        host = cfg.daemon.hostname  # restart only: notices name the host they are about
        self.post = Post(self.reloader, self.store, self.clock, self.stats)
        self.alarm = Alarm(self.store, self.clock, self.post, host)
        self.canaries = Canaries(self.store, self.clock, self.stats, self.alarm)
        self.watch = HookWatch(
            self.reloader,
            self.alarm,
            self.ledger.activity,
            self.store,
            self.clock,
            command=line_command(config_path),
        )
        self.quiet = QuietWatch(
            self.reloader, self.ledger.activity, self.post, self.store, self.clock, host=host
        )
        self.intake: Intake | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._bound: Path | None = None  # the socket path we bound (None: systemd's)

    @property
    def runtime(self) -> Runtime:
        """The sinks, pipeline and scheduler in force."""
        return self.reloader.runtime

    @property
    def cfg(self) -> Config:
        """The config in force."""
        return self.reloader.cfg

    @property
    def host(self) -> str:
        return self.cfg.daemon.hostname

    # -- what the control API, the signals and tests call ------------------------------

    def stop(self) -> None:
        """Ask for a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    def status(self) -> dict[str, object]:
        runtime = self.runtime
        return (
            self.stats.as_dict(
                groups=len(runtime.aggregator.groups),
                pending_events=runtime.aggregator.pending_events,
                outbox=runtime.sinks.outbox,
                sinks=runtime.sinks.status(),
                state=self.store.health(),
            )
            | {"bans": self.bans.status(), "evidence": self.witness.status()}
            | runtime.status()
            | {"hook": self.hook()}
        )

    def hook(self) -> dict[str, object]:
        """`status`'s `hook` object: whether refusals reach the daemon, and who says so."""
        return {
            **self.alarm.status(),
            **self.watch.status(),
            "canary": self.canaries.status(),
            "quiet": self.quiet.status(),
            "notices": self.post.status(),
        }

    def flush(self) -> int:
        """Report every group with news now, whatever its timer says; how many events."""
        return sum(r.events for r in self.runtime.scheduler.collect(force=True, why="flush"))

    async def test_alert(self) -> dict[str, str]:
        # The ban sink's answer is the book's: whether the kernel holds every ban.
        sinks, bans = await asyncio.gather(
            self.runtime.sinks.test_alert(self.host, self.clock.now()), self.bans.test_alert()
        )
        return dict(sorted((sinks | bans).items()))

    def reload(self) -> bool:
        """Re-read the config file; apply it, or keep the old one if it is bad."""
        if self._stop.is_set():
            log.warning("reload_ignored", reason="shutting down")
            return False
        return self.reloader.reload(self.config_path)

    def apply(self, new: Config) -> None:
        """Run on a validated config (see Reloader.apply); not once shutdown began: new
        sink tasks then would keep it waiting for ever."""
        if not self._stop.is_set():
            self.reloader.apply(new)

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Start every part in order, serve until `stop`, then stop them in reverse."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._stopped)
            await self.bans.claim()  # TableInUseError: another wrapalert keeps the ban table
            stack.callback(self.witness.close)
            spool_seen = stack.enter_context(self._state())
            intake = stack.enter_context(self._socket())
            spool = self._spool(intake, spool_seen)
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            if handle_signals:
                stack.enter_context(self._signals())
            committer = self.ledger.run(self.cfg.daemon.commit_interval)
            stack.callback(tg.create_task(committer, name="committer").cancel)
            await stack.enter_async_context(self._runtime(tg))
            stack.enter_context(self._chores(tg, spool))
            stack.enter_context(self._reading(intake))
            await stack.enter_async_context(self._control())
            self.ready.set()
            systemd.notify("READY=1\nSTATUS=listening")
            log.info(
                "ready",
                socket=str(self.cfg.daemon.socket),
                sinks=len(self.runtime.sinks.workers),
                state=str(self.store.path),
                restored_groups=len(self.runtime.aggregator.groups),
            )
            await self._stop.wait()
            systemd.notify("STOPPING=1")
            log.info("stopping")

    @contextlib.contextmanager
    def _state(self) -> Iterator[set[str]]:
        """The state database, and what the last run left restored; yields the spool
        files already counted."""
        self.store.open()  # StateError (a newer schema) propagates: do not start
        try:
            snap, outbox = self.ledger.load(self.runtime.sinks.workers)
            self.runtime.restore(snap.groups, outbox)
            self.silences.load()
            self.bans.load()
            for book in (self.post, self.alarm, self.canaries, self.watch, self.quiet):
                book.load()
            yield snap.spool_seen
        finally:
            self.ledger.close()
            self.store.close()

    @contextlib.contextmanager
    def _socket(self) -> Iterator[Intake]:
        daemon = self.cfg.daemon
        sock, self._bound = take_socket(daemon.socket, daemon.socket_mode)
        self.intake = Intake(
            sock,
            target=self.reloader,
            stats=self.stats,
            twins=self.ledger.twins,
            witness=self.witness,
            canary=self.canaries,
            activity=self.ledger.activity,
            now=self.clock.now,
        )
        try:
            yield self.intake
        finally:
            self.intake.close(self._bound)

    def _spool(self, intake: Intake, seen: set[str]) -> Spool:
        spool = Spool(
            self.cfg.daemon.spool_dir,
            intake=intake,
            store=self.store,
            commit=self.ledger.commit,
            clock=self.clock,
            seen=seen,
        )
        spool.ensure()
        spool.ingest()
        return spool

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            yield
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)

    @contextlib.asynccontextmanager
    async def _runtime(self, tg: asyncio.TaskGroup) -> AsyncIterator[None]:
        self.reloader.start(tg)
        yield
        await self.reloader.stop(self.cfg.daemon.shutdown_grace)  # a clean stop only

    @contextlib.contextmanager
    def _chores(self, tg: asyncio.TaskGroup, spool: Spool) -> Iterator[None]:
        tasks = [
            tg.create_task(spool.run(self.cfg.daemon.spool_scan_interval), name="spool"),
            tg.create_task(systemd.heartbeat(self.status, self.clock.sleep), name="heartbeat"),
            tg.create_task(metrics.run(self.reloader, self.status, self.clock), name="metrics"),
            tg.create_task(self.bans.run(), name="bans"),
            tg.create_task(self.post.run(), name="post"),
            tg.create_task(self.alarm.run(), name="alarm"),
            tg.create_task(self.watch.run(), name="hook watch"),
            tg.create_task(self.quiet.run(), name="quiet watch"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
        spool.ingest()  # a clean stop only: what senders spooled since the last pass

    @contextlib.contextmanager
    def _reading(self, intake: Intake) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_reader(intake.sock.fileno(), self._read, intake)
        try:
            yield
        finally:
            loop.remove_reader(intake.sock.fileno())
        # A clean stop only: from here on senders spool, so nothing queues unread; what
        # the kernel already queued is ours.
        intake.refuse_new(self._bound)
        self._bound = None  # unlinked: a successor may bind the path while we finish
        intake.drain(limit=SHUTDOWN_DRAIN)

    def _read(self, intake: Intake) -> None:
        self.ledger.accepted(intake.drain())

    @contextlib.asynccontextmanager
    async def _control(self) -> AsyncIterator[None]:
        path = self.cfg.daemon.control_socket
        commands = api.commands(self, self.silences, self.bans, self.explainer, self.canaries)
        server = await api.serve(path, commands)
        try:
            yield
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _stopped(self) -> None:
        log.info("stopped", **self.status())
