"""The heartbeat: one always-firing `WrapalertHeartbeat` alert per alertmanager sink with
`heartbeat` set, so a fleet's Alertmanager can tell a silent host from a quiet one.

Config-scoped (the runtime builder makes one per such sink; a reload makes new
ones): every `heartbeat` seconds the alert goes to every peer of the sink
(sinks/amapi.py), with its endsAt HEARTBEAT_AHEAD intervals ahead
(sinks/alertmanager.py's `heartbeat_alert`). Nothing resolves it, not even a
clean stop: a stopped daemon is what a dead man's switch must hear about, and
the alert resolves by itself once it is no longer refreshed. A failed post is
logged when the sink's state changes and tried again at the next beat; one peer
taking it is enough (the switch watches the cluster's notifications).
"""

from __future__ import annotations

import asyncio
import json

import structlog

from wrapalert.clock import Clock
from wrapalert.sinks.alertmanager import AlertmanagerSinkConfig, heartbeat_alert
from wrapalert.sinks.amapi import Peers

log = structlog.get_logger()


class Heartbeat:
    """Posts one sink's WrapalertHeartbeat every interval."""

    def __init__(self, cfg: AlertmanagerSinkConfig, *, host: str, clock: Clock) -> None:
        self.name = cfg.name
        self.peers = Peers.connect(cfg.access)  # ConfigError: the password or CA file
        self.interval = cfg.heartbeat
        self.static = dict(cfg.labels)
        self.host = host
        self.clock = clock
        self.started = clock.now()
        self.sent: float | None = None  # when a peer last took it
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, tg: asyncio.TaskGroup) -> None:
        self.task = tg.create_task(self.run(), name=f"heartbeat-{self.name}")

    def retire(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        while True:
            await self.beat()
            await self.clock.sleep(self.interval)

    async def beat(self) -> None:
        """Post the alert once; remember whether any peer took it."""
        now = self.clock.now()
        alert = heartbeat_alert(
            host=self.host,
            static=self.static,
            started=self.started,
            now=now,
            interval=self.interval,
        )
        outcomes = await self.peers.post(json.dumps([alert], separators=(",", ":")).encode())
        errors = [str(e) for e in outcomes if e is not None]
        if len(errors) < len(outcomes):
            if self.last_error is not None:
                log.info("heartbeat_recovered", sink=self.name)
            self.sent, self.last_error = now, None
            return
        error = "; ".join(errors)
        if self.last_error is None:
            log.warning("heartbeat_failed", sink=self.name, error=error)
        self.last_error = error

    def status(self) -> dict[str, object]:
        return {"interval": self.interval, "sent": self.sent, "last_error": self.last_error}
