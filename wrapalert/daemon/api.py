"""The control API: what `wrapalert status|flush|test-alert|silence|ban|explain` ask the
daemon.

Each request is a JSON object in and out (daemon/control.py carries them). This
module only decodes a request into a typed command (every value from the
socket checked for its type here) and calls the domain object that owns the
rule: the daemon (`Daemon`: status, flush, test-alert), the silence book
(daemon/silences.py), the ban book (daemon/bans.py), the explainer
(daemon/explain.py) and the canary book (daemon/canaries.py, which checks its own
requests' values). Their refusals (`SilenceError`, `BanRefusedError`,
`CanaryError`) come back as the reply's error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from wrapalert.daemon import control
from wrapalert.daemon.banpolicy import BanRefusedError
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.canaries import Canaries, CanaryError
from wrapalert.daemon.explain import Explainer, IPNetwork
from wrapalert.daemon.silences import Silence, SilenceError, Silences
from wrapalert.match import Matcher, MatcherError
from wrapalert.netaddr import query_network

log = structlog.get_logger()

Request = dict[str, Any]


class Daemon(Protocol):
    """What the API asks the daemon itself (daemon/server.py)."""

    def status(self) -> dict[str, object]: ...
    def flush(self) -> int: ...
    async def test_alert(self) -> dict[str, str]: ...


# -- the commands, decoded ---------------------------------------------------------------


@dataclass(frozen=True)
class SilenceAdd:
    matchers: tuple[Matcher, ...]
    seconds: float
    comment: str

    @classmethod
    def decode(cls, req: Request) -> SilenceAdd:
        texts, seconds = req.get("matchers"), req.get("seconds")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise control.ControlError("a silence needs at least one field=value matcher")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise control.ControlError("a silence needs a duration of up to a year")
        try:
            matchers = tuple(Matcher.parse(t) for t in texts)
        except MatcherError as exc:
            raise control.ControlError(str(exc)) from None
        return cls(matchers, float(seconds), str(req.get("comment", "")))


@dataclass(frozen=True)
class SilenceExpire:
    id: int

    @classmethod
    def decode(cls, req: Request) -> SilenceExpire:
        silence_id = req.get("id")
        if isinstance(silence_id, bool) or not isinstance(silence_id, int):
            raise control.ControlError(f"no active silence with id {silence_id!r}")
        return cls(silence_id)


@dataclass(frozen=True)
class BanAdd:
    addr: str
    seconds: float | None  # None: the rule's ban_for
    force: bool

    @classmethod
    def decode(cls, req: Request) -> BanAdd:
        seconds = req.get("seconds")
        # JSON true is an int to Python: a duration must be a number, never a boolean.
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float)
        ):
            raise control.ControlError("a ban's duration is a number of seconds")
        return cls(_addr(req), seconds, req.get("force", False) is True)


@dataclass(frozen=True)
class BanDel:
    addr: str

    @classmethod
    def decode(cls, req: Request) -> BanDel:
        return cls(_addr(req))


@dataclass(frozen=True)
class Explain:
    net: IPNetwork  # an address is a network of one

    @classmethod
    def decode(cls, req: Request) -> Explain:
        try:
            return cls(query_network(_addr(req)))
        except ValueError as exc:
            raise control.ControlError(str(exc)) from None


def _addr(req: Request) -> str:
    text = req.get("addr")
    if not isinstance(text, str):
        raise control.ControlError("name an address, e.g. 203.0.113.7")
    return text


# -- the handlers ----------------------------------------------------------------------------


def _silence(s: Silence) -> dict[str, Any]:
    return {
        "id": s.id,
        "matchers": [str(m) for m in s.matchers],
        "created": s.created,
        "expires": s.expires,
        "comment": s.comment,
    }


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A book's refusal as the reply's error."""
    try:
        yield
    except (SilenceError, BanRefusedError, CanaryError) as exc:
        raise control.ControlError(str(exc)) from None


def commands(
    daemon: Daemon, silences: Silences, bans: Bans, explainer: Explainer, canaries: Canaries
) -> dict[str, control.Handler]:
    """The control socket's commands by name, as control.serve takes them."""
    own, silence, ban = DaemonCommands(daemon, bans), SilenceCommands(silences), BanCommands(bans)
    canary = CanaryCommands(canaries)
    return {
        "explain": ExplainCommands(explainer).explain,
        "canary_start": canary.start,
        "canary_finish": canary.finish,
        "status": own.status,
        "flush": own.flush,
        "test_alert": own.send_test_alert,
        "silence_add": silence.add,
        "silence_list": silence.list,
        "silence_expire": silence.expire,
        "ban_list": ban.list,
        "ban_add": ban.add,
        "ban_del": ban.delete,
        "ban_flush": ban.flush,
    }


class DaemonCommands:
    """`status`, `flush` and `test-alert`: the daemon's own."""

    def __init__(self, daemon: Daemon, bans: Bans) -> None:
        self.daemon = daemon
        self.bans = bans

    async def status(self, _req: Request) -> Request:
        await self.bans.refresh()  # what the kernel holds now, not at the last reconcile
        return {"status": self.daemon.status()}

    async def flush(self, _req: Request) -> Request:
        events = self.daemon.flush()
        return {"digests": int(events > 0), "events": events}

    async def send_test_alert(self, _req: Request) -> Request:
        return {"sinks": await self.daemon.test_alert()}


class SilenceCommands:
    """`silence add|list|expire`: the silence book's."""

    def __init__(self, silences: Silences) -> None:
        self.silences = silences

    async def add(self, req: Request) -> Request:
        cmd = SilenceAdd.decode(req)
        with _refusals():
            added = self.silences.add(cmd.matchers, cmd.seconds, cmd.comment)
        return {
            "id": added.id,
            "matchers": [str(m) for m in added.matchers],
            "expires": added.expires,
            "durable": added.durable,
        }

    async def list(self, _req: Request) -> Request:
        return {"silences": [_silence(s) for s in self.silences.in_force()]}

    async def expire(self, req: Request) -> Request:
        cmd = SilenceExpire.decode(req)
        with _refusals():
            expired = self.silences.expire(cmd.id)
        return {"id": expired.id}


class BanCommands:
    """`ban list|add|del|flush`: the ban book's."""

    def __init__(self, bans: Bans) -> None:
        self.bans = bans

    async def list(self, _req: Request) -> Request:
        sink = self.bans.sink
        return {
            "mode": self.bans.mode,
            "table": sink.table if sink is not None else None,
            "bans": [b.as_dict() for b in self.bans.in_force()],
        }

    async def add(self, req: Request) -> Request:
        cmd = BanAdd.decode(req)
        with _refusals():
            ban = await self.bans.add(cmd.addr, cmd.seconds, force=cmd.force)
        return ban.as_dict()

    async def delete(self, req: Request) -> Request:
        cmd = BanDel.decode(req)
        with _refusals():
            return {"target": await self.bans.remove(cmd.addr)}

    async def flush(self, _req: Request) -> Request:
        with _refusals():
            return {"lifted": await self.bans.flush()}


class ExplainCommands:
    """`explain ADDRESS`: the explainer's."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer

    async def explain(self, req: Request) -> Request:
        cmd = Explain.decode(req)
        return {"explanation": self.explainer.explain(cmd.net)}


class CanaryCommands:
    """`wrapalert canary`: the canary book's (it checks every value it is given)."""

    def __init__(self, canaries: Canaries) -> None:
        self.canaries = canaries

    async def start(self, req: Request) -> Request:
        with _refusals():
            run = self.canaries.start(req.get("pid"), req.get("probes"))
        return {"run": run.id}

    async def finish(self, req: Request) -> Request:
        with _refusals():
            return await self.canaries.finish(
                req.get("run"),
                req.get("failures", {}),
                req.get("timeout"),
                req.get("unprobed", []),
                req.get("missing"),
            )


async def serve(path: Path, commands: dict[str, control.Handler]) -> asyncio.Server | None:
    """The control socket, or None (logged) when it cannot be made: the daemon's real
    work, alerts, goes on without it."""
    try:
        return await control.serve(path, commands)
    except OSError as exc:
        log.error("control_socket_unavailable", path=str(path), error=str(exc))
        return None
