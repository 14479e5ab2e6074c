"""Reloading: the runtime in force, and how a new Config replaces it.

The `Reloader` holds the one runtime in force (daemon/runtime.py); whatever
needs "the current pipeline" (intake, the metrics file) is given the
reloader and asks it. `apply` builds the next runtime completely from the new
Config, then swaps it in whole: the sinks' workers hand over their state, the
ban book follows the new ban sink, the old digest timer stops, the new
runtime's tasks start. A build that fails (a sink that cannot be built)
raises before anything changed: the old runtime runs on.

What a running daemon cannot change (`RESTART_ONLY`) is reported and kept, and
a config whose trusted uids this daemon's user namespace hides is refused
(`checked`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from wrapalert import config as config_mod
from wrapalert import userns
from wrapalert.clock import monotonic_usec
from wrapalert.config import Config
from wrapalert.confparse import ConfigError
from wrapalert.daemon import systemd
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.ledger import Ledger
from wrapalert.daemon.runtime import Runtime, RuntimeBuilder
from wrapalert.model import Event
from wrapalert.pipeline.forward import ForwardWorker
from wrapalert.sinks.base import NoticeSink

log = structlog.get_logger()

# hostname: digests already in the outbox and alerts already posted carry the old one.
RESTART_ONLY = ("socket", "state_dir", "spool_dir", "control_socket", "socket_mode", "hostname")


def checked(cfg: Config) -> Config:
    """`cfg`, if this daemon can tell each of its trusted uids apart (userns.py): in a
    user namespace that hides one, that uid's reports would pass for untrusted."""
    problem = userns.check_trusted(cfg.daemon.trusted_uids)
    if problem is not None:
        raise ConfigError(f"{cfg.source}: {problem}")
    return cfg


def load(path: Path | None) -> Config:
    """The config file at `path` (None: the default path), checked (ConfigError)."""
    return checked(config_mod.load(path))


def keep_restart_only(old: Config, new: Config) -> Config:
    """`new`, with what only a restart can change kept as in `old` (each such change
    logged)."""
    for key in RESTART_ONLY:
        if getattr(old.daemon, key) != getattr(new.daemon, key):
            log.warning("reload_needs_restart", key=f"daemon.{key}")
    kept = {key: getattr(old.daemon, key) for key in RESTART_ONLY}
    return replace(new, daemon=replace(new.daemon, **kept))


class Reloader:
    """Holds the runtime in force; `apply` builds the next one and swaps it in whole."""

    def __init__(
        self, builder: RuntimeBuilder, first: Runtime, *, ledger: Ledger, bans: Bans
    ) -> None:
        self.builder = builder
        self.ledger = ledger
        self.bans = bans
        self.runtime = first
        # What intake reads at each batch (intake.Target): the runtime in force's.
        self.accept: Callable[[Event], None] = first.pipeline.accept
        self.trusted_uids = frozenset(first.cfg.daemon.trusted_uids)
        self._tg: asyncio.TaskGroup | None = None
        bans.configure(first.sinks.banner)

    @property
    def cfg(self) -> Config:
        """The config in force."""
        return self.runtime.cfg

    @property
    def notice_sinks(self) -> Mapping[str, NoticeSink]:
        """The digest sinks in force that take notices (daemon/notices.py)."""
        return self.runtime.sinks.noticers

    @property
    def notice_forwarders(self) -> Sequence[ForwardWorker]:
        """The forwarders in force that take hook records (daemon/notices.py)."""
        return self.runtime.sinks.notice_forwarders

    # -- lifecycle --------------------------------------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Run the runtime in force; a runtime swapped in later starts in `tg` too."""
        self._tg = tg
        self.runtime.start(tg)

    async def stop(self, grace: float) -> None:
        """Shutdown: no more swaps; the runtime in force flushes and its sinks finish."""
        self._tg = None
        await self.runtime.stop(grace)

    def reload(self, path: Path | None) -> bool:
        """Re-read the config file at `path` (None: the default path); apply it, or keep
        the old one if it is bad. systemd hears of it (Type=notify-reload)."""
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
        keeping = self.runtime.cfg.source
        try:
            new = load(path)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc), keeping=keeping)
            systemd.notify("READY=1\nSTATUS=reload refused: config error, old config kept")
            return False
        try:
            self.apply(new)
        except Exception as exc:  # e.g. a template dir a sink cannot read: keep the old
            log.exception("reload_failed", error=str(exc), keeping=keeping)
            systemd.notify("READY=1\nSTATUS=reload failed, old config kept")
            return False
        systemd.notify("READY=1")
        log.info("reloaded", config=new.source)
        return True

    def apply(self, new: Config) -> None:
        """Build a runtime for `new` (a validated Config) and swap it in, the old one's
        state handed over. What only a restart can change is reported and kept."""
        old = self.runtime
        new = keep_restart_only(old.cfg, new)
        self.ledger.commit()  # the old aggregator's changes are saved before it hands over
        # Built before anything is handed over: if building fails, the old one runs on.
        runtime = self.builder.build(new, previous=old)
        self.bans.configure(runtime.sinks.banner)  # the new ban stage follows its rule
        if runtime.sinks.take_over(old.sinks):
            self.ledger.store.stage_retry_failed()
        old.retire()
        self.runtime = runtime
        self.accept = runtime.pipeline.accept
        self.trusted_uids = frozenset(new.daemon.trusted_uids)
        if self._tg is not None:
            runtime.start(self._tg)
        self.ledger.commit()
