"""The daemon's lifecycle: startup, main loop, shutdown, in that fixed order.

Startup: take the systemd socket or bind one, ingest the spool, start one
worker per sink, the scheduler and the spool scanner (clients also spool
when the socket queue is full, so the spool is read every few seconds).
Main loop: intake feeds the aggregator; the scheduler sleeps until the next
group falls due (woken early when a new group is due sooner) and hands
digests to every sink worker. Shutdown
(SIGTERM/SIGINT): stop intake, read what is already queued in the socket,
flush every group with news, give the sinks `shutdown_grace` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from wrapalert import sinks as sink_registry
from wrapalert.config import Config
from wrapalert.daemon import systemd
from wrapalert.daemon.intake import Intake, open_socket
from wrapalert.daemon.stats import Stats
from wrapalert.model import Digest, Event, GroupReport
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.deliver import SinkWorker
from wrapalert.sinks.base import Sink

log = structlog.get_logger()

DeliveryHook = Callable[[str, Digest, Exception | None], None]


class Server:
    """One running daemon. `run` returns after a clean shutdown."""

    def __init__(
        self,
        cfg: Config,
        *,
        sinks: list[Sink] | None = None,
        on_delivery: DeliveryHook | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.now = now
        self.host = socket.gethostname()
        self.stats = Stats()
        self.aggregator = Aggregator(cfg.digest, cfg.limits.max_groups)
        self.on_delivery = on_delivery
        built = (
            sinks
            if sinks is not None
            else [sink_registry.build(s, cfg.digest.template_dir) for s in cfg.sinks]
        )
        self.workers = [
            SinkWorker(s, per_hour=cfg.limits.mails_per_hour, on_result=self._result, now=now)
            for s in built
        ]
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._sock: socket.socket | None = None
        self._bound: Path | None = None
        self.intake: Intake | None = None

    def stop(self) -> None:
        """Ask for a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    def status(self) -> dict[str, object]:
        return self.stats.as_dict(
            groups=len(self.aggregator.groups),
            pending_events=self.aggregator.pending_events,
            outbox=sum(w.depth for w in self.workers),
            sinks=[w.name for w in self.workers],
        )

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._startup()
        assert self.intake is not None  # noqa: S101 - set by _startup
        intake = self.intake
        try:
            async with asyncio.TaskGroup() as tg:
                workers = [tg.create_task(w.run(), name=f"sink:{w.name}") for w in self.workers]
                scheduler = tg.create_task(self._schedule(), name="scheduler")
                scanner = tg.create_task(self._scan_spool(), name="spool")
                loop.add_reader(intake.sock.fileno(), intake.drain)
                if handle_signals:
                    self._install_signals(loop)
                self.ready.set()
                systemd.notify("READY=1\nSTATUS=listening")
                log.info("ready", socket=str(self.cfg.daemon.socket), sinks=len(self.workers))
                await self._stop.wait()

                systemd.notify("STOPPING=1")
                log.info("stopping")
                loop.remove_reader(intake.sock.fileno())
                intake.drain(limit=None)  # what the kernel already queued is ours
                scheduler.cancel()
                scanner.cancel()
                intake.ingest_spool(self.cfg.daemon.spool_dir)
                self._dispatch(self.aggregator.collect(self.now(), force=True))
                for worker in self.workers:
                    worker.close()
                _, late = await asyncio.wait(workers, timeout=self.cfg.daemon.shutdown_grace)
                for task in late:
                    log.error("sink_shutdown_timeout", task=task.get_name())
                    task.cancel()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self._close_socket()
            log.info("stopped", **self.status())

    def _startup(self) -> None:
        sock = systemd.adopt_socket()
        if sock is None:
            sock = open_socket(self.cfg.daemon.socket, self.cfg.daemon.socket_mode)
            self._bound = self.cfg.daemon.socket
        self._sock = sock
        self.intake = Intake(
            sock,
            trusted_uids=self.cfg.daemon.trusted_uids,
            stats=self.stats,
            accept=self._accept,
            now=self.now,
        )
        _ensure_spool(self.cfg.daemon.spool_dir)
        self.intake.ingest_spool(self.cfg.daemon.spool_dir)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        # Reloading arrives with the durable state (issue #4); until then a HUP
        # must not kill the daemon, as its default action would.
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("reload_unsupported", hint="restart to apply")
        )

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound.unlink()

    def _accept(self, event: Event) -> None:
        if self.aggregator.add(event, self.now()):
            self._wake.set()

    async def _scan_spool(self) -> None:
        """Clients spool when the socket queue stays full; pick those events up."""
        assert self.intake is not None  # noqa: S101 - set by _startup
        interval = max(self.cfg.daemon.spool_scan_interval, 0.1)
        while True:
            await asyncio.sleep(interval)
            self.intake.ingest_spool(self.cfg.daemon.spool_dir)

    async def _schedule(self) -> None:
        """Sleep until the next group is due, or until a new group may be due sooner."""
        while True:
            due = self.aggregator.next_due()
            delay = None if due is None else due - self.now()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            self._dispatch(self.aggregator.collect(self.now()))

    def _dispatch(self, reports: list[GroupReport]) -> None:
        if not reports:
            return
        digest = Digest(host=self.host, created=self.now(), groups=tuple(reports))
        self.stats.digests += 1
        log.info("digest", digest=digest.id, events=digest.events, groups=len(digest.groups))
        for worker in self.workers:
            worker.submit(digest)

    def _result(self, sink: str, digest: Digest, error: Exception | None) -> None:
        if error is None:
            self.stats.delivered[sink] += 1
            self.stats.events_delivered[sink] += digest.events
        else:
            self.stats.failed[sink] += 1
            self.stats.events_failed[sink] += digest.events
        if self.on_delivery is not None:
            self.on_delivery(sink, digest, error)


def _ensure_spool(path: Path) -> None:
    """Create the spool dir if we can: sticky and world-writable, as clients run as anyone."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True)
        path.chmod(0o1777)
    except OSError as exc:
        log.warning("spool_unavailable", path=str(path), error=str(exc))
