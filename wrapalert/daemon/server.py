"""The daemon's lifecycle: startup, main loop, shutdown, in that fixed order.

Startup: open the state database and restore groups, counters and the
outbox; take the systemd socket or bind one; ingest the spool; start one
worker per sink, the scheduler, the committer, the spool scanner, the
heartbeat and the control socket.

Main loop: intake feeds the aggregator; the committer writes changed state
every `commit_interval` (group commit); the scheduler sleeps until the next
group falls due (woken early when a new group is due sooner), then makes a
digest and commits it to the outbox together with the groups' reset before
any sink sees it. Clients also spool when the socket queue is full, so the
spool is read every `spool_scan_interval`; its files are removed only once
their events are committed.

Shutdown (SIGTERM/SIGINT): stop intake, read what the kernel already queued
and what is in the spool, flush every group with news, give the sinks
`shutdown_grace` seconds, commit. What is still undelivered stays in the
outbox for the next start. SIGHUP reloads the configuration; a bad one is
refused and the old one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from wrapalert import config as config_mod
from wrapalert import sinks as sink_registry
from wrapalert.config import Config, ScanConfig
from wrapalert.daemon import control, systemd
from wrapalert.daemon.intake import Intake, LogLimit, open_socket
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.model import Digest, Event, GroupReport, alert_test_report, fold_reports
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.deliver import RateLimit, SinkWorker
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.pipeline.mute import Matcher, MatcherError, Mute, Silence
from wrapalert.pipeline.route import Router
from wrapalert.pipeline.scan import ScanDetector, ScanSignal
from wrapalert.sinks.base import EventSink, Sink, TransientSinkError, close_sink

log = structlog.get_logger()

DeliveryHook = Callable[[str, Digest, Exception | None], None]
SPOOL_STUCK_MAX = 10_000  # spool entries we could not remove, remembered so as to skip them
SHUTDOWN_DRAIN = 100_000  # datagrams read at shutdown at most: a flood cannot hold it open
COMMIT_EVERY = 10_000  # events: commit early when a flood fills the window faster
HEARTBEAT = 5.0  # seconds between STATUS= updates when systemd listens
TEST_ALERT_BUDGET = 8.0  # seconds a test alert waits for the sinks: within the control timeout


class Server:
    """One running daemon. `run` returns after a clean shutdown."""

    def __init__(
        self,
        cfg: Config,
        *,
        sinks: list[Sink | EventSink] | None = None,
        on_delivery: DeliveryHook | None = None,
        now: Callable[[], float] = time.time,
        config_path: Path | None = None,
    ) -> None:
        # None: the default path, where a missing file means the built-in defaults.
        self.cfg = cfg
        self.config_path = config_path
        self.now = now
        self.host = socket.gethostname()
        self.stats = Stats()
        self._scan_log = LogLimit()
        self.aggregator = Aggregator(
            cfg.digest,
            cfg.limits.max_groups,
            cfg.limits.untrusted_interval,
            Router(cfg.routes),
            scans=_detector(cfg.scan),
            scan_severity=cfg.scan.severity,
            on_scan=self._scan_found,
        )
        self.store = Store(cfg.daemon.state_dir, now)
        self.mute = Mute(cfg.ignore.networks, cfg.ignore.daemons)
        self._silenced_since_digest = 0
        self._memory_silence_ids = 0
        self.on_delivery = on_delivery
        digest_sinks, event_sinks = _split(sinks if sinks is not None else self._build_sinks(cfg))
        self.workers = {name: self._worker(s, cfg) for name, s in digest_sinks.items()}
        self.forwarders = {name: self._forwarder(s, cfg) for name, s in event_sinks.items()}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._sock: socket.socket | None = None
        self._bound: Path | None = None
        self.intake: Intake | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._since_commit = 0
        self._saved_counters = ""
        self._spool_taken: set[str] = set()
        self._spool_stuck: set[str] = set()
        self._retired: list[asyncio.Task[None]] = []  # tasks of sinks a reload removed

    # -- public ----------------------------------------------------------

    def stop(self) -> None:
        """Ask for a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    def status(self) -> dict[str, object]:
        sinks: dict[str, dict[str, object]] = {
            name: {"queued": w.depth, "held_failed": len(w.failed), "last_error": w.last_error}
            for name, w in self.workers.items()
        }
        for name, f in self.forwarders.items():
            sinks[name] = {
                "queued": len(f.buffer),
                "held": f.held,
                "held_failed": 0,
                "last_error": f.last_error,
            }
        state: dict[str, object] = {
            "path": str(self.store.path),
            "ok": self.store.error is None,
            "error": self.store.error,
            "moved_aside": str(self.store.moved_aside) if self.store.moved_aside else None,
            "commits": self.store.commits,
        }
        return self.stats.as_dict(
            groups=len(self.aggregator.groups),
            pending_events=self.aggregator.pending_events,
            outbox=sum(w.depth + len(w.failed) for w in self.workers.values()),
            sinks=sinks,
            state=state,
        )

    def flush(self) -> int:
        """Report every group with news now, whatever its timer says; how many events."""
        reports = self.aggregator.collect(self.now(), force=True)
        self._dispatch(reports, "flush")
        return sum(r.events for r in reports)

    async def test_alert(self) -> dict[str, str]:
        """A test notification to every sink now, past routes and rate limits: per sink,
        "delivered" or why not. It reports no events, so no count changes."""
        now = self.now()
        digest = Digest(self.host, now, (alert_test_report(now),))
        record: dict[str, object] = {
            "type": "event",
            "received": round(now, 6),
            "daemon": "wrapalert-test",
            "client_addr": "192.0.2.0",  # TEST-NET-1 (RFC 5737): no real source
            "client_name": "wrapalert-test-alert",
            "verdict": "deny",
            "host": self.host,
            "trusted": True,
            "uid": os.getuid(),
            "test": True,
        }
        sends: dict[str, Awaitable[None]] = {
            name: w.sink.send(digest) for name, w in self.workers.items()
        }
        sends |= {name: f.sink.send_records([record]) for name, f in self.forwarders.items()}
        tasks = {asyncio.ensure_future(job): name for name, job in sends.items()}
        results: dict[str, str] = {}
        if tasks:
            try:
                done, pending = await asyncio.wait(tasks, timeout=TEST_ALERT_BUDGET)
            finally:  # also when the daemon stops meanwhile: no send outlives the request
                for task in tasks:
                    task.cancel()
            for task in pending:
                results[tasks[task]] = f"no answer within {TEST_ALERT_BUDGET:g}s"
            for task in done:
                error = task.exception()
                results[tasks[task]] = "delivered" if error is None else f"failed: {error}"
        log.info("test_alert", **results)
        return dict(sorted(results.items()))

    def reload(self) -> bool:
        """Re-read the config file; apply it, or keep the old one if it is bad."""
        if self._stop.is_set():
            log.warning("reload_ignored", reason="shutting down")
            return False
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            log.error("reload_refused", error=str(exc), keeping=self.cfg.source)
            systemd.notify("READY=1\nSTATUS=reload refused: config error, old config kept")
            return False
        self._apply(new)
        systemd.notify("READY=1")
        log.info("reloaded", config=new.source)
        return True

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._startup()
        assert self.intake is not None  # noqa: S101 - set by _startup
        intake = self.intake
        ctl: asyncio.Server | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for name, worker in self.workers.items():
                    self._tasks[f"sink:{name}"] = tg.create_task(worker.run())
                for name, forwarder in self.forwarders.items():
                    self._tasks[f"sink:{name}"] = tg.create_task(forwarder.run())
                for name, job in (
                    ("scheduler", self._schedule),
                    ("committer", self._commit_loop),
                    ("spool", self._scan_spool),
                    ("heartbeat", self._heartbeat),
                ):
                    self._tasks[name] = tg.create_task(job(), name=name)
                ctl = await self._serve_control()
                loop.add_reader(intake.sock.fileno(), self._drain)
                if handle_signals:
                    self._install_signals(loop)
                self.ready.set()
                systemd.notify("READY=1\nSTATUS=listening")
                log.info(
                    "ready",
                    socket=str(self.cfg.daemon.socket),
                    sinks=len(self.workers),
                    state=str(self.store.path),
                    restored_groups=len(self.aggregator.groups),
                )
                await self._stop.wait()
                await self._shutdown(loop, intake, ctl)
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            if ctl is not None:
                ctl.close()
                with contextlib.suppress(FileNotFoundError):
                    self.cfg.daemon.control_socket.unlink()
            self._commit()
            self.store.close()
            self._close_socket()
            log.info("stopped", **self.status())

    # -- lifecycle -------------------------------------------------------

    def _startup(self) -> None:
        self.store.open()  # StateError (a newer schema) propagates: do not start
        snap = self.store.load()
        self.stats = Stats.from_dict(snap.counters)
        self._saved_counters = json.dumps(self.stats.to_dict(), sort_keys=True)
        self.aggregator.restore(snap.groups)
        self.mute.silences = [
            Silence(i, tuple(Matcher.parse(m) for m in ms), c, e, t)
            for i, ms, c, e, t in self.store.silences(self.now())
        ]
        for name, sink_worker in self.workers.items():
            # The cap counts mails sent before a restart too: a restart loop cannot reset it.
            sent = self.store.deliveries_since(name, self.now() - 3600.0)
            sink_worker.limit = RateLimit(self.cfg.limits.mails_per_hour, sent)
        for row in snap.outbox:
            worker = self.workers.get(row.sink)
            if worker is None:
                log.warning(
                    "outbox_orphaned",
                    sink=row.sink,
                    digest=row.digest.id,
                    hint="that sink is no longer configured; it stays in the outbox",
                )
            elif row.failed_error is None:
                worker.queue.append(row.digest)
            else:
                worker.failed.append(row.digest)
                worker.last_error = row.failed_error
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
        # Files counted by the last run but not yet removed: remove, never count twice.
        self._spool_taken = set(snap.spool_seen)
        self._ingest_spool()

    async def _shutdown(
        self, loop: asyncio.AbstractEventLoop, intake: Intake, ctl: asyncio.Server | None
    ) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        if ctl is not None:
            ctl.close()
        loop.remove_reader(intake.sock.fileno())
        intake.drain(limit=SHUTDOWN_DRAIN)  # what the kernel already queued is ours
        for name in ("scheduler", "spool", "heartbeat"):
            self._tasks[name].cancel()
        self._ingest_spool()
        self._dispatch(self.aggregator.collect(self.now(), force=True), "shutdown")
        workers = [t for n, t in self._tasks.items() if n.startswith("sink:")] + self._retired
        for worker in self.workers.values():
            worker.close()
        for forwarder in self.forwarders.values():
            forwarder.close()
        if workers:
            _, late = await asyncio.wait(workers, timeout=self.cfg.daemon.shutdown_grace)
            for task in late:
                log.warning(
                    "sink_shutdown_timeout",
                    task=task.get_name(),
                    hint="its digests stay in the outbox for the next start",
                )
                task.cancel()
        self._tasks["committer"].cancel()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound.unlink()

    # -- intake and state --------------------------------------------------

    def _drain(self) -> None:
        assert self.intake is not None  # noqa: S101 - the reader exists only after startup
        self.intake.drain()
        if self._since_commit >= COMMIT_EVERY:
            self._commit()

    def _accept(self, event: Event) -> None:
        self._since_commit += 1
        now = event.received
        verdict = self.mute.classify(event, now) if self.mute.active else None
        if verdict == "ignored":
            self.stats.ignored += 1
        elif verdict == "silenced":
            self.stats.silenced += 1
            self._silenced_since_digest += 1
        else:
            if self.aggregator.add(event, now):
                self._wake.set()
            if self.forwarders:
                self._forward(event)

    def _scan_found(self, signal: ScanSignal) -> None:
        self.stats.scans += 1
        allowed, suppressed = self._scan_log.allow(signal.kind)
        if allowed:
            log.warning(
                "scan_detected",
                kind=signal.kind,
                target=signal.target,
                daemons=",".join(signal.daemons),
                sources=signal.sources,
                suppressed=suppressed,
            )

    def _forward(self, event: Event) -> None:
        """Hand the event to each forwarding sink its route allows (all, without routes)."""
        targets = self.aggregator.router.route(event)[1] if self.aggregator.router.routes else None
        for name, forwarder in self.forwarders.items():
            if targets is None or name in targets:
                forwarder.offer(event)

    def _commit(self) -> bool:
        """Stage what changed since the last commit and write it in one transaction."""
        agg, store = self.aggregator, self.store
        for key in agg.dirty:
            store.stage_group(key, agg.export(key))
        for key in agg.dropped:
            store.stage_group(key, None)
        agg.dirty.clear()
        agg.dropped.clear()
        counters = json.dumps(self.stats.to_dict(), sort_keys=True)
        if counters != self._saved_counters:
            store.stage_counters(self.stats.to_dict())
            self._saved_counters = counters
        self._since_commit = 0
        return store.commit()

    async def _commit_loop(self) -> None:
        interval = max(self.cfg.daemon.commit_interval, 0.01)  # "0" must not spin
        pruned = self.now()
        while True:
            await asyncio.sleep(interval)
            self._commit()
            if self.now() - pruned > 3600:
                self.store.prune()
                pruned = self.now()

    def _ingest_spool(self) -> None:
        """Count new spool files; remove them (and forget their names) once committed.

        The spool is world-writable: anything may be there. What cannot be removed
        (a directory someone made, say) is counted once and then skipped.
        """
        assert self.intake is not None  # noqa: S101 - set by _startup
        spool = self.cfg.daemon.spool_dir
        self.intake.sweep_stale(spool)
        skip = self._spool_taken | self._spool_stuck
        taken = self.intake.ingest_spool(spool, skip=skip)
        self.store.stage_spool_seen(taken)
        self._spool_taken.update(taken)
        if not self._spool_taken or not self._commit():
            return  # without a commit the files are the only durable copy: keep them
        gone = sorted(self._spool_taken)
        for name in gone:
            if not _remove(spool / name):
                if len(self._spool_stuck) >= SPOOL_STUCK_MAX:
                    self._spool_stuck.clear()  # bounded: at worst such entries recount
                self._spool_stuck.add(name)
        self.store.stage_spool_gone(gone)
        self._spool_taken.clear()

    async def _scan_spool(self) -> None:
        interval = max(self.cfg.daemon.spool_scan_interval, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                self._ingest_spool()
            except Exception:  # a task boundary: hostile spool content must not stop us
                log.exception("spool_scan_failed", path=str(self.cfg.daemon.spool_dir))

    # -- digests -------------------------------------------------------------

    async def _schedule(self) -> None:
        """Sleep until the next group is due, or until a new group may be due sooner."""
        while True:
            due = self.aggregator.next_due()
            delay = None if due is None else due - self.now()
            if delay is None or delay > 0:
                # Not wait_for: on 3.11 it can swallow a cancel that meets a wake-up, and
                # shutdown then waits for this task forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            self._dispatch(self.aggregator.collect(self.now()), "due")

    def _dispatch(self, reports: list[GroupReport], why: str) -> None:
        """Make each sink's digest (the groups routed to it), commit them to the outbox
        together with the groups' reset, then queue them."""
        if not reports:
            return
        created, silenced = self.now(), self._silenced_since_digest
        self._silenced_since_digest = 0
        self.stats.digests += 1
        # A group routed only to sinks that no longer exist (a reload) goes everywhere.
        names = set(self.workers)
        everywhere = [r for r in reports if r.sinks is None or names.isdisjoint(r.sinks)]
        queued = []
        for name, worker in self.workers.items():
            mine = [r for r in reports if r.sinks is not None and name in r.sinks]
            mine = everywhere + mine
            if not mine:
                continue
            digest = Digest(
                host=self.host, created=created, groups=tuple(fold_reports(mine)), silenced=silenced
            )
            self.store.stage_enqueue(name, digest)
            queued.append((worker, digest))
            log.info(
                "digest",
                digest=digest.id,
                sink=name,
                events=digest.events,
                groups=len(digest.groups),
                severity=digest.severity,
                why=why,
            )
        self._commit()
        for worker, digest in queued:
            worker.submit(digest)

    def _merged(self, sink: str, parts: list[Digest], merged: Digest) -> None:
        self.store.stage_replace(sink, [d.id for d in parts], merged)
        self._commit()

    def _forwarded(self, sink: str, events: int, error: Exception | None) -> None:
        """Forwarding sinks count events: their delivered and failed are events."""
        if error is None:
            self.stats.delivered[sink] += events
            self.stats.events_delivered[sink] += events
        else:
            self.stats.failed[sink] += events
            self.stats.events_failed[sink] += events

    def _result(self, sink: str, digest: Digest, error: Exception | None) -> None:
        if error is None:
            self.stats.delivered[sink] += 1
            self.stats.events_delivered[sink] += digest.events
            self.store.stage_delivered(sink, digest)
        elif isinstance(error, TransientSinkError):
            pass  # only at shutdown: it stays in the outbox for the next start
        else:
            self.stats.failed[sink] += 1
            self.stats.events_failed[sink] += digest.events
            self.store.stage_failed(sink, digest, str(error))
        self._commit()
        if self.on_delivery is not None:
            self.on_delivery(sink, digest, error)

    # -- sinks and config ----------------------------------------------------

    @staticmethod
    def _build_sinks(cfg: Config) -> list[Sink | EventSink]:
        return [sink_registry.build(s, cfg.digest.template_dir) for s in cfg.sinks]

    def _forwarder(self, sink: EventSink, cfg: Config) -> ForwardWorker:
        # Every forwarding sink's table may set its own events_per_second.
        rate = next(
            (sink_registry.events_per_second(s) for s in cfg.sinks if s.name == sink.name),
            None,
        )
        return ForwardWorker(
            sink,
            on_result=self._forwarded,
            per_second=rate or cfg.limits.events_per_second,
            now=self.now,
            backoff=(cfg.limits.retry_min, cfg.limits.retry_max),
        )

    def _worker(self, sink: Sink, cfg: Config) -> SinkWorker:
        return SinkWorker(
            sink,
            per_hour=cfg.limits.mails_per_hour,
            on_result=self._result,
            on_merge=self._merged,
            now=self.now,
            backoff=(cfg.limits.retry_min, cfg.limits.retry_max),
        )

    def _apply(self, new: Config) -> None:
        """Take a validated config; what only a restart can change is reported, not applied."""
        if self._stop.is_set():
            return  # new sink tasks now would keep shutdown waiting for ever
        old = self.cfg
        kept = {}
        for key in ("socket", "state_dir", "spool_dir", "control_socket", "socket_mode"):
            if getattr(old.daemon, key) != getattr(new.daemon, key):
                log.warning("reload_needs_restart", key=f"daemon.{key}")
            kept[key] = getattr(old.daemon, key)  # the running daemon keeps what it opened
        new = replace(new, daemon=replace(new.daemon, **kept))
        self.aggregator.configure(
            new.digest, new.limits.max_groups, new.limits.untrusted_interval, Router(new.routes)
        )
        if new.scan != old.scan:  # unchanged settings keep what the detector has seen
            self.aggregator.scans = _detector(new.scan)
            self.aggregator.scan_severity = new.scan.severity
        silences = self.mute.silences
        self.mute = Mute(new.ignore.networks, new.ignore.daemons)
        self.mute.silences = silences
        if self.intake is not None:
            self.intake.trusted = frozenset(new.daemon.trusted_uids)
        fresh, fresh_events = _split(self._build_sinks(new))
        self._apply_forwarders(fresh_events, new)
        self._apply_workers(fresh, new)
        self.cfg = new
        self._commit()

    def _apply_forwarders(self, fresh_events: dict[str, EventSink], new: Config) -> None:
        for name, forwarder in list(self.forwarders.items()):
            if name not in fresh_events:
                forwarder.close()  # its task sends what it holds, then ends
                del self.forwarders[name]
                self._retired.append(self._tasks.pop(f"sink:{name}"))
                continue
            replacement = self._forwarder(fresh_events.pop(name), new)
            old = forwarder.sink
            forwarder.sink, forwarder.bucket.rate = replacement.sink, replacement.bucket.rate
            if self._tg is not None:
                self._tg.create_task(close_sink(old))  # e.g. its collector connection
        for name, sink in fresh_events.items():
            self.forwarders[name] = self._forwarder(sink, new)
            if self._tg is not None:
                self._tasks[f"sink:{name}"] = self._tg.create_task(self.forwarders[name].run())

    def _apply_workers(self, fresh: dict[str, Sink], new: Config) -> None:
        for name, worker in list(self.workers.items()):
            if name not in fresh:
                worker.close()  # its task delivers what the cap allows, then ends
                del self.workers[name]
                self._retired.append(self._tasks.pop(f"sink:{name}"))
                continue
            worker.sink = fresh.pop(name)
            worker.limit = RateLimit(new.limits.mails_per_hour, worker.limit.sent)
            worker.backoff = (new.limits.retry_min, new.limits.retry_max)
        for name, sink in fresh.items():
            worker = self._worker(sink, new)
            self.workers[name] = worker
            if self._tg is not None:
                self._tasks[f"sink:{name}"] = self._tg.create_task(worker.run())
        retried = sum(w.retry_failed() for w in self.workers.values())
        if retried:
            self.store.stage_retry_failed()
            log.info("retrying_failed_digests", count=retried)

    # -- control and systemd -------------------------------------------------

    async def _serve_control(self) -> asyncio.Server | None:
        async def status(_req: dict[str, Any]) -> dict[str, Any]:
            return {"status": self.status()}

        async def flush(_req: dict[str, Any]) -> dict[str, Any]:
            events = self.flush()
            return {"digests": int(events > 0), "events": events}

        async def send_test_alert(_req: dict[str, Any]) -> dict[str, Any]:
            return {"sinks": await self.test_alert()}

        handlers: dict[str, control.Handler] = {
            "status": status,
            "flush": flush,
            "test_alert": send_test_alert,
            "silence_add": self._silence_add,
            "silence_list": self._silence_list,
            "silence_expire": self._silence_expire,
        }
        try:
            return await control.serve(self.cfg.daemon.control_socket, handlers)
        except OSError as exc:
            log.error(
                "control_socket_unavailable",
                path=str(self.cfg.daemon.control_socket),
                error=str(exc),
            )
            return None

    async def _silence_add(self, req: dict[str, Any]) -> dict[str, Any]:
        texts, seconds = req.get("matchers"), req.get("seconds")
        comment = str(req.get("comment", ""))[:500]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise control.ControlError("a silence needs at least one field=value matcher")
        if not isinstance(seconds, int | float) or not 0 < seconds <= 366 * 86400:
            raise control.ControlError("a silence needs a duration of up to a year")
        try:
            matchers = tuple(Matcher.parse(t) for t in texts)
        except MatcherError as exc:
            raise control.ControlError(str(exc)) from None
        now = self.now()
        canonical = [str(m) for m in matchers]
        silence_id = self.store.add_silence(canonical, now, now + seconds, comment)
        durable = silence_id is not None
        if silence_id is None:  # state unavailable: the silence lives until restart
            self._memory_silence_ids -= 1
            silence_id = self._memory_silence_ids
        self.mute.silences.append(Silence(silence_id, matchers, now, now + seconds, comment))
        log.info(
            "silence_added", id=silence_id, matchers=canonical, seconds=seconds, durable=durable
        )
        return {
            "id": silence_id,
            "matchers": canonical,
            "expires": now + seconds,
            "durable": durable,
        }

    async def _silence_list(self, _req: dict[str, Any]) -> dict[str, Any]:
        now = self.now()
        return {
            "silences": [
                {
                    "id": s.id,
                    "matchers": [str(m) for m in s.matchers],
                    "created": s.created,
                    "expires": s.expires,
                    "comment": s.comment,
                }
                for s in self.mute.silences
                if s.active(now)
            ]
        }

    async def _silence_expire(self, req: dict[str, Any]) -> dict[str, Any]:
        silence_id = req.get("id")
        now = self.now()
        found = [s for s in self.mute.silences if s.id == silence_id and s.active(now)]
        if not isinstance(silence_id, int) or not found:
            raise control.ControlError(f"no active silence with id {silence_id!r}")
        self.store.expire_silence(silence_id, now)
        self.mute.silences = [s for s in self.mute.silences if s.id != silence_id]
        log.info("silence_expired", id=silence_id)
        return {"id": silence_id}

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 at half systemd's interval (proof the loop runs) and STATUS= lines."""
        watchdog = systemd.watchdog_interval()
        interval = min(HEARTBEAT, watchdog / 2) if watchdog else HEARTBEAT
        while True:
            status = self.status()
            line = (
                f"STATUS=received {status['received']}, pending {status['pending_events']},"
                f" outbox {status['outbox']}"
            )
            if self.store.error:
                line += ", state in memory only"
            systemd.notify(f"WATCHDOG=1\n{line}" if watchdog else line)
            await asyncio.sleep(interval)


def _detector(cfg: ScanConfig) -> ScanDetector | None:
    return ScanDetector(cfg.window, cfg.daemons, cfg.sources) if cfg.enabled else None


def _split(built: list[Sink | EventSink]) -> tuple[dict[str, Sink], dict[str, EventSink]]:
    """Digest sinks (mail) and forwarding sinks (records), by name."""
    digests: dict[str, Sink] = {}
    events: dict[str, EventSink] = {}
    for sink in built:
        if isinstance(sink, EventSink):
            events[sink.name] = sink
        else:
            digests[sink.name] = sink
    return digests, events


def _remove(path: Path) -> bool:
    """Remove a spool entry, file or (empty) directory; False if it must stay."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        try:
            path.rmdir()
        except OSError:
            return False
    except OSError:
        return False
    return True


def _ensure_spool(path: Path) -> None:
    """Create the spool dir if we can: sticky and world-writable, as clients run as anyone."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True)
        path.chmod(0o1777)
    except OSError as exc:
        log.warning("spool_unavailable", path=str(path), error=str(exc))
