"""The post: the daemon's notices to every digest sink, past the mail cap, and the alarm's
records to the forwarding sinks that take notices.

A notice (wrapalert/notice.py: alarm off, alarm on, a quiet daemon) is its
own mail, not a digest: each digest sink that takes notices (`Capabilities`
notices: smtp, sendmail, maildir) gets it through `send_notice`, at once.
It is not held by `mails_per_hour` (nor does it count against it): notices
are few by construction, one per distinct problem. What is queued is saved
in the state database with the change that caused it, so a restart resumes
the delivery (at least once, with a stable Message-ID).

Overload behaviour, written down: at most MAX_PENDING notices wait per sink;
past that the oldest is dropped (counted as failed, logged). A transient
failure is retried with the shared backoff (pipeline/retry.py), per sink, one
notice at a time in order; a permanent one drops that notice (counted,
logged); a sink a reload removed loses what waited for it (logged).

The sinks are those of the runtime in force, asked at each send (a reload
replaces them): `InForce` is the reloader (daemon/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Notice
from wrapalert.pipeline.retry import Backoff, pause
from wrapalert.sinks.base import NoticeSink, TransientSinkError

log = structlog.get_logger()

MAX_PENDING = 32  # notices waiting per sink


class RecordTaker(Protocol):
    """A forwarding sink's worker (pipeline/forward.py): records past its rate limit."""

    def offer_record(self, record: dict[str, object]) -> None: ...


class InForce(Protocol):
    """The runtime in force's sinks that take notices (daemon/reload.py's Reloader)."""

    @property
    def notice_sinks(self) -> Mapping[str, NoticeSink]: ...

    @property
    def notice_forwarders(self) -> Sequence[RecordTaker]: ...


@dataclass
class _Pending:
    sink: str
    notice: Notice
    due: float = 0.0  # not before (a retry's pause)
    pauses: Callable[[], float] | None = field(default=None, compare=False)


class Post:
    """Owns the notices not yet delivered; `run` delivers them."""

    def __init__(
        self,
        in_force: InForce,
        store: Store,
        clock: Clock,
        stats: Stats,
        backoff: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self.in_force = in_force
        self.store = store
        self.clock = clock
        self.stats = stats
        self.backoff = Backoff(*backoff)
        self.pending: list[_Pending] = []
        self._wake = asyncio.Event()

    def notice(self, notice: Notice) -> None:
        """Send `notice` to every digest sink in force that takes notices, now."""
        sinks = list(self.in_force.notice_sinks)
        if not sinks:
            log.warning("notice_unsent", kind=notice.kind, why="no sink takes notices")
        for name in sinks:
            waiting = [p for p in self.pending if p.sink == name]
            if len(waiting) >= MAX_PENDING:
                self.pending.remove(waiting[0])
                self.stats.notices_failed += 1
                log.error(
                    "notice_dropped", sink=name, kind=waiting[0].notice.kind, why="queue full"
                )
            self.pending.append(_Pending(name, notice))
        self._save()
        self._wake.set()

    def offer(self, record: dict[str, object]) -> None:
        """A record about the alarm to every forwarding sink in force that takes notices."""
        for taker in self.in_force.notice_forwarders:
            taker.offer_record(record)

    async def run(self) -> None:
        """Deliver, oldest first per sink, each sink on its own; for ever (a daemon task)."""
        while True:
            now = self.clock.now()
            heads: dict[str, _Pending] = {}
            for item in self.pending:
                heads.setdefault(item.sink, item)
            due = [item for item in heads.values() if item.due <= now]
            if due:
                await asyncio.gather(*(self._send(item) for item in due))
                continue
            self._wake.clear()
            later = [item.due for item in heads.values()]
            await pause(self.clock, min(later) - now if later else 3600.0, self._wake)

    async def _send(self, item: _Pending) -> None:
        sink = self.in_force.notice_sinks.get(item.sink)
        if sink is None:
            log.warning("notice_dropped", sink=item.sink, kind=item.notice.kind, why="no such sink")
            self._done(item)
            return
        try:
            await sink.send_notice(item.notice)
        except TransientSinkError as exc:
            item.pauses = item.pauses or self.backoff.pauses()
            wait = item.pauses()
            item.due = self.clock.now() + wait
            log.warning("notice_retry", sink=item.sink, error=str(exc), retry_in=round(wait, 3))
        except Exception as exc:  # noqa: BLE001 - permanent, or a sink bug: never stop the daemon
            self.stats.notices_failed += 1
            log.error("notice_failed", sink=item.sink, kind=item.notice.kind, error=str(exc))
            self._done(item)
        else:
            self.stats.notices[item.notice.kind] += 1
            log.info("notice_delivered", sink=item.sink, kind=item.notice.kind, id=item.notice.id)
            self._done(item)

    def _done(self, item: _Pending) -> None:
        with contextlib.suppress(ValueError):
            self.pending.remove(item)
        self._save()

    # -- the state database -------------------------------------------------------------

    def _save(self) -> None:
        rows = [{"sink": p.sink, "notice": p.notice.to_json()} for p in self.pending]
        self.store.stage_value("notices", rows)

    def load(self) -> None:
        """The notices the last run left undelivered; damaged rows are skipped."""
        rows = self.store.value("notices")
        for row in rows if isinstance(rows, list) else []:
            with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
                self.pending.append(_Pending(str(row["sink"]), Notice.from_json(row["notice"])))
        if self.pending:
            self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "pending": len(self.pending),
            "delivered": dict(self.stats.notices),
            "failed": self.stats.notices_failed,
        }
