"""Spool ingestion: events clients wrote to disk while the daemon was down or busy.

Clients spool when the socket is missing and when its queue is full, so the
spool is read at start, every `spool_scan_interval` and at shutdown. Its
files are removed only once their events are committed (the names are
committed with them, so a crash in between counts nothing twice). The spool
is world-writable: anything may be there. What cannot be removed (a
directory someone made, say) is counted once and then skipped; that memory
is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.intake import Intake
from wrapalert.daemon.store import Store

log = structlog.get_logger()

STUCK_MAX = 10_000  # entries we could not remove, remembered so as to skip them


class Spool:
    """Owns one spool directory's reading and clean-up."""

    def __init__(
        self,
        path: Path,
        *,
        intake: Intake,
        store: Store,
        commit: Callable[[], bool],
        clock: Clock,
        seen: Iterable[str] = (),
    ) -> None:
        self.path = path
        self.intake = intake
        self.store = store
        self.commit = commit
        self.clock = clock
        # Files counted by the last run but not yet removed: remove, never count twice.
        self.taken: set[str] = set(seen)
        self.stuck: set[str] = set()

    def ensure(self) -> None:
        """Create the spool dir if we can: sticky and world-writable, as clients run as anyone."""
        if self.path.is_dir():
            return
        try:
            self.path.mkdir(parents=True)
            self.path.chmod(0o1777)
        except OSError as exc:
            log.warning("spool_unavailable", path=str(self.path), error=str(exc))

    def ingest(self) -> None:
        """Count new spool files; remove them (and forget their names) once committed."""
        self.intake.sweep_stale(self.path)
        taken = self.intake.ingest_spool(self.path, skip=self.taken | self.stuck)
        self.store.stage_spool_seen(taken)
        self.taken.update(taken)
        if not self.taken or not self.commit():
            return  # without a commit the files are the only durable copy: keep them
        gone = sorted(self.taken)
        for name in gone:
            if not _remove(self.path / name):
                if len(self.stuck) >= STUCK_MAX:
                    self.stuck.clear()  # bounded: at worst such entries recount
                self.stuck.add(name)
        self.store.stage_spool_gone(gone)
        self.taken.clear()

    async def run(self, interval: float) -> None:
        interval = max(interval, 0.1)
        while True:
            await self.clock.sleep(interval)
            try:
                self.ingest()
            except Exception:  # a task boundary: hostile spool content must not stop us
                log.exception("spool_scan_failed", path=str(self.path))


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
