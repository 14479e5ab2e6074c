"""The canary book: the refusals `wrapalert canary` makes libwrap run, expected, claimed
before anything counts them, and each run's verdict.

`wrapalert canary` (wrapalert/canary.py) says over the control socket which
refusals it is about to make real libwrap run (`start`: its pid, which
libwrap's %p hands the hook, and per hook rule the daemon name and client
address it asks about), asks libwrap, then waits (`finish`) for their events.

Intake asks `claims` for every trusted report before anything else (twins,
witness, the pipeline): one whose (pid, daemon, client) an open run expects
is the canary's. It is counted in `canary_events` and nowhere else: never
`received`, never in a digest, toward a ban, a scan, a story, a twin or the
activity the quiet watch reads. Untrusted reports are never claimed.

The verdict of a run: every probe arrived within its timeout, and the canary
problems are cleared (the alarm is on again if they were the last) and
`last_success` set; else one problem per failed rule (kind `canary`) goes to
the alarm book, which sends an alarm-off notice. Saved in the state database.

Bounded: MAX_RUNS runs open at a time, MAX_PROBES probes each, every text
from the request cut to MAX_TEXT; a run's probes go on claiming for ABSORB
seconds after it finished (a late copy of the same refusal, through the
spool), then are forgotten; a run never finished (its command died) is
forgotten after ABSORB too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.notice import Problem

log = structlog.get_logger()

MAX_RUNS = 4
MAX_PROBES = 64
MAX_TEXT = 2048  # a rule's text is at most 2047 bytes for libwrap
MAX_WAIT = 8.0  # seconds `finish` waits at most: within the control socket's timeout
ABSORB = 120.0


class CanaryError(ValueError):
    """A request the book refuses; the message says why."""


class Reporter(Protocol):
    """The alarm book (daemon/alarm.py)."""

    def report(self, source: str, problems: list[Problem]) -> None: ...


@dataclass
class Probe:
    """One refusal the canary makes libwrap run, for one hook rule."""

    path: str  # the table
    line: int  # the rule's line
    rule: str  # its text
    daemon: str
    client: str
    arrived: float | None = None
    failed: str | None = None  # why the command could not make it (no event expected)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


@dataclass
class Run:
    id: int
    pid: str
    started: float
    probes: list[Probe]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: float | None = None

    def complete(self) -> bool:
        return all(p.arrived is not None or p.failed is not None for p in self.probes)


class Canaries:
    """Open runs, the probes they expect, and the verdicts."""

    def __init__(self, store: Store, clock: Clock, stats: Stats, alarm: Reporter) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.alarm = alarm
        self.runs: dict[int, Run] = {}
        # (pid, daemon, client) -> the run and probe: what intake asks, per trusted report.
        self.expected: dict[tuple[str, str, str], tuple[Run, Probe]] = {}
        self.last_run: float | None = None
        self.last_success: float | None = None
        self.failed: list[str] = []  # the rules of the last run that failed, with why
        self._ids = itertools.count(1)

    def claims(self, fields: dict[str, str]) -> bool:
        """Whether a trusted report is a canary's refusal (then it is counted here only)."""
        key = (
            fields.get("daemon_pid", ""),
            fields.get("daemon", ""),
            fields.get("client_addr", ""),
        )
        hit = self.expected.get(key)
        if hit is None:
            return False
        run, probe = hit
        if probe.arrived is None:
            probe.arrived = self.clock.now()
            if run.complete():
                run.done.set()
        self.stats.canary_events += 1
        return True

    # -- what the control API calls -------------------------------------------------------

    def start(self, pid: object, probes: object) -> Run:
        """Expect the refusals a canary (process `pid`) is about to make."""
        self._expire()
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise CanaryError("a canary run needs the pid of the process that asks libwrap")
        if not isinstance(probes, list) or len(probes) > MAX_PROBES:
            raise CanaryError(f"a canary run has a list of at most {MAX_PROBES} probes")
        if len(self.runs) >= MAX_RUNS:
            raise CanaryError("too many canary runs at once: wait for the others to finish")
        parsed = [_probe(p) for p in probes]
        keys = [(str(pid), p.daemon, p.client) for p in parsed]
        if len(set(keys)) != len(keys) or any(k in self.expected for k in keys):
            raise CanaryError("two probes of one canary run would look alike (pid, daemon, client)")
        run = Run(next(self._ids), str(pid), self.clock.now(), parsed)
        self.runs[run.id] = run
        for key, probe in zip(keys, parsed, strict=True):
            self.expected[key] = (run, probe)
        log.info("canary_started", run=run.id, pid=pid, probes=len(parsed))
        return run

    async def finish(
        self,
        run_id: object,
        failures: object,
        seconds: object,
        unprobed: object = (),
        missing: object = None,
    ) -> dict[str, Any]:
        """Wait (at most `seconds`) for the run's refusals, then record its verdict.
        `failures`: {probe index: why} the command could not make; `unprobed`: the hook
        rules it found no connection for (path, line, rule, why); `missing`: why it had no
        rule to probe at all."""
        run = self.runs.get(run_id) if isinstance(run_id, int) else None
        if run is None or run.finished is not None:
            raise CanaryError("no such canary run open (it expired, or was finished)")
        wait = _seconds(seconds)
        if not isinstance(unprobed, list | tuple) or len(unprobed) > MAX_PROBES:
            raise CanaryError(f"a canary run has a list of at most {MAX_PROBES} unprobed rules")
        others = [_rule(r) for r in unprobed]
        for index, why in failures.items() if isinstance(failures, dict) else ():
            with contextlib.suppress(ValueError, IndexError, TypeError):
                run.probes[int(index)].failed = _text(why) or "it could not be made"
        if not run.complete():
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(wait):
                    await run.done.wait()
        run.finished = self.clock.now()
        problems = [self._problem(p, wait) for p in run.probes if p.arrived is None]
        problems += [self._problem(p, wait) for p in others]
        if missing is not None:
            problems.append(self._nothing(_text(missing)))
        self._verdict(problems)
        log.info(
            "canary_finished",
            run=run.id,
            ok=not problems,
            arrived=sum(p.arrived is not None for p in run.probes),
            probes=len(run.probes),
        )
        return {
            "passed": not problems,  # not "ok": the control reply's own
            "probes": [
                {
                    "where": p.where,
                    "daemon": p.daemon,
                    "client": p.client,
                    "after": None if p.arrived is None else round(p.arrived - run.started, 3),
                    "why": None if p.arrived is not None else p.failed or _lost(p, wait),
                }
                for p in run.probes
            ],
            "unprobed": [{"where": p.where, "why": p.failed} for p in others],
            "missing": _text(missing) if missing is not None else None,
        }

    def _problem(self, probe: Probe, wait: float) -> Problem:
        why = probe.failed or _lost(probe, wait)
        return Problem(
            key=f"canary:{probe.path}:{' '.join(probe.rule.split())}",
            kind="canary",
            path=probe.path,
            line=probe.line,
            message=f"the canary's refusal by this rule never reached wrapalert: {why}",
            fix="wrapalert check-hosts shows what breaks it; this clears when wrapalert canary "
            "passes again",
        )

    def _nothing(self, why: str) -> Problem:
        return Problem(
            key="canary:no rule",
            kind="canary",
            path="(hosts.deny)",
            line=0,
            message=f"the canary found nothing to prove: {why}",
            fix="wrapalert check-hosts says what to add; this clears when wrapalert canary passes",
        )

    def _verdict(self, problems: list[Problem]) -> None:
        now = self.clock.now()
        self.last_run = now
        if not problems:
            self.last_success = now
        self.failed = [f"{p.where}: {p.message}" for p in problems]
        self.alarm.report("canary", problems)
        self.store.stage_value(
            "canary",
            {"last_run": self.last_run, "last_success": self.last_success, "failed": self.failed},
        )

    def _expire(self) -> None:
        """Forget runs whose refusals can no longer come (or whose command died)."""
        now = self.clock.now()
        for run in list(self.runs.values()):
            if (run.finished if run.finished is not None else run.started) + ABSORB <= now:
                del self.runs[run.id]
        self.expected = {k: v for k, v in self.expected.items() if v[0].id in self.runs}

    # -- the state database, status ------------------------------------------------------------

    def load(self) -> None:
        data = self.store.value("canary")
        if not isinstance(data, dict):
            return
        for name in ("last_run", "last_success"):
            value = data.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(self, name, float(value))
        failed = data.get("failed")
        self.failed = (
            [_text(f) for f in failed if isinstance(f, str)] if isinstance(failed, list) else []
        )

    def status(self) -> dict[str, Any]:
        self._expire()
        return {
            "last_run": self.last_run,
            "last_success": self.last_success,
            "ok": None if self.last_run is None else not self.failed,
            "failed": list(self.failed),
            "events": self.stats.canary_events,
        }


def _lost(probe: Probe, wait: float) -> str:
    return (
        f"libwrap ran it for {probe.daemon} from {probe.client}, but its event did not arrive "
        f"within {wait:g} s (the spawn command failed, or sent elsewhere)"
    )


def _probe(data: object) -> Probe:
    if not isinstance(data, dict):
        raise CanaryError("each probe is an object: path, line, rule, daemon, client")
    line = data.get("line")
    daemon, client = data.get("daemon"), data.get("client")
    if isinstance(line, bool) or not isinstance(line, int) or line < 0:
        raise CanaryError("a probe's line is a number")
    if not isinstance(daemon, str) or not 0 < len(daemon) <= 127:
        raise CanaryError("a probe names its daemon")
    try:
        # As the wire parser canonicalises it: the report must match it byte for byte.
        address = str(ipaddress.ip_address(str(client)))
    except ValueError:
        raise CanaryError("a probe's client is an address") from None
    return Probe(_text(data.get("path")), line, _text(data.get("rule")), daemon, address)


def _rule(data: object) -> Probe:
    """A hook rule the command found no connection for: a probe that failed at once."""
    if not isinstance(data, dict):
        raise CanaryError("each unprobed rule is an object: path, line, rule, why")
    line = data.get("line")
    if isinstance(line, bool) or not isinstance(line, int) or line < 0:
        raise CanaryError("a rule's line is a number")
    why = _text(data.get("why")) or "no connection reaches it"
    return Probe(_text(data.get("path")), line, _text(data.get("rule")), "", "", failed=why)


def _text(value: object) -> str:
    """Text from a request, bounded and without control characters (it reaches mail)."""
    text = value if isinstance(value, str) else ""
    return "".join(c if c.isprintable() else " " for c in text[:MAX_TEXT])


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CanaryError("a canary's timeout is a number of seconds")
    return min(float(value), MAX_WAIT)
