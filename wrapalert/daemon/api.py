"""The control API: what `wrapalert status|flush|test-alert|silence|ban` ask the daemon.

Each request is a JSON object in and out (daemon/control.py carries them).
The handlers only call the collaborators they are given; silences are owned
here: durable in the state database, live in the pipeline's mute stage. Bans
are owned by the ban book (daemon/bans.py), whose `api_*` methods serve `ban`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon import control
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher, MatcherError
from wrapalert.pipeline.mute import Mute, Silence

log = structlog.get_logger()

MAX_SILENCE = 366 * 86400.0  # seconds


class Silences:
    """Silences: added, listed and expired through the control socket."""

    def __init__(self, store: Store, clock: Clock, mute: Callable[[], Mute]) -> None:
        self.store = store
        self.clock = clock
        self.mute = mute  # the mute in force: a reload replaces it, silences carry over
        self._memory_ids = 0

    def load(self) -> list[Silence]:
        """The silences still active in the state database (at start)."""
        return [
            Silence(i, tuple(Matcher.parse(m) for m in ms), c, e, t)
            for i, ms, c, e, t in self.store.silences(self.clock.now())
        ]

    async def add(self, req: dict[str, Any]) -> dict[str, Any]:
        texts, seconds = req.get("matchers"), req.get("seconds")
        comment = str(req.get("comment", ""))[:500]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise control.ControlError("a silence needs at least one field=value matcher")
        if not isinstance(seconds, int | float) or not 0 < seconds <= MAX_SILENCE:
            raise control.ControlError("a silence needs a duration of up to a year")
        try:
            matchers = tuple(Matcher.parse(t) for t in texts)
        except MatcherError as exc:
            raise control.ControlError(str(exc)) from None
        now = self.clock.now()
        canonical = [str(m) for m in matchers]
        silence_id = self.store.add_silence(canonical, now, now + seconds, comment)
        durable = silence_id is not None
        if silence_id is None:  # state unavailable: the silence lives until restart
            self._memory_ids -= 1
            silence_id = self._memory_ids
        self.mute().silences.append(Silence(silence_id, matchers, now, now + seconds, comment))
        log.info(
            "silence_added", id=silence_id, matchers=canonical, seconds=seconds, durable=durable
        )
        return {
            "id": silence_id,
            "matchers": canonical,
            "expires": now + seconds,
            "durable": durable,
        }

    async def list(self, _req: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "silences": [
                {
                    "id": s.id,
                    "matchers": [str(m) for m in s.matchers],
                    "created": s.created,
                    "expires": s.expires,
                    "comment": s.comment,
                }
                for s in self.mute().silences
                if s.active(now)
            ]
        }

    async def expire(self, req: dict[str, Any]) -> dict[str, Any]:
        silence_id = req.get("id")
        now = self.clock.now()
        mute = self.mute()
        found = [s for s in mute.silences if s.id == silence_id and s.active(now)]
        if not isinstance(silence_id, int) or not found:
            raise control.ControlError(f"no active silence with id {silence_id!r}")
        self.store.expire_silence(silence_id, now)
        mute.silences = [s for s in mute.silences if s.id != silence_id]
        log.info("silence_expired", id=silence_id)
        return {"id": silence_id}


def handlers(
    *,
    status: Callable[[], dict[str, object]],
    flush: Callable[[], int],
    test_alert: Callable[[], Awaitable[dict[str, str]]],
    silences: Silences,
    bans: Bans | None = None,
) -> dict[str, control.Handler]:
    """The control socket's commands, by name."""

    async def on_status(_req: dict[str, Any]) -> dict[str, Any]:
        if bans is not None:
            await bans.refresh()  # what the kernel holds now, not at the last reconcile
        return {"status": status()}

    async def on_flush(_req: dict[str, Any]) -> dict[str, Any]:
        events = flush()
        return {"digests": int(events > 0), "events": events}

    async def on_test_alert(_req: dict[str, Any]) -> dict[str, Any]:
        return {"sinks": await test_alert()}

    table: dict[str, control.Handler] = {
        "status": on_status,
        "flush": on_flush,
        "test_alert": on_test_alert,
        "silence_add": silences.add,
        "silence_list": silences.list,
        "silence_expire": silences.expire,
    }
    if bans is not None:
        table |= {
            "ban_list": bans.api_list,
            "ban_add": bans.api_add,
            "ban_del": bans.api_del,
            "ban_flush": bans.api_flush,
        }
    return table


async def serve(path: Path, commands: dict[str, control.Handler]) -> asyncio.Server | None:
    """The control socket, or None (logged) when it cannot be made: the daemon's real
    work, alerts, goes on without it."""
    try:
        return await control.serve(path, commands)
    except OSError as exc:
        log.error("control_socket_unavailable", path=str(path), error=str(exc))
        return None
