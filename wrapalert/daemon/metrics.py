"""Prometheus metrics in a file, for node_exporter's textfile collector.

Every `[metrics] interval` the daemon's status (the `wrapalert status --json`
object) is rendered in the Prometheus text exposition format and written to
`[metrics] textfile`: into a temporary file in the same directory, then
renamed over the old one, so node_exporter never reads half a file (its
collector reads `*.prom` only, and the temporary name does not end so).

Names follow Prometheus' conventions: `wrapalert_` prefix, counters end in
`_total` and count since the state database was created (they survive
restarts), gauges are what is true now. Label values are escaped; rejection
reasons are fixed words and sink names come from the config, so the series
are bounded.

node_exporter keeps serving the last file when the daemon stops, so the file
says when it was written (`wrapalert_metrics_written_timestamp_seconds`): a
stale one means the daemon is not running (packaging/examples/wrapalert.rules.yml).

A write that fails (a missing directory, a full disk) is logged once until a
write succeeds again; the loop goes on. `[metrics]` is read each round, so a
reload can turn the file on, off or move it (the old file is removed).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Protocol

import structlog

from wrapalert.clock import Clock
from wrapalert.config import Config

log = structlog.get_logger()

Status = Mapping[str, object]

# Counters of the status object: (status key, metric, help).
COUNTERS = (
    ("received", "wrapalert_events_received_total", "Events accepted from the socket or spool."),
    ("untrusted", "wrapalert_events_untrusted_total", "Accepted events from untrusted uids."),
    (
        "duplicates",
        "wrapalert_events_duplicate_total",
        "Second copies of one refusal (the hook line's logger and client): dropped.",
    ),
    ("spooled", "wrapalert_events_spooled_total", "Events ingested from the spool directory."),
    ("ignored", "wrapalert_events_ignored_total", "Events matching [ignore]: counted only."),
    ("silenced", "wrapalert_events_silenced_total", "Events matching an active silence."),
    ("scans", "wrapalert_scans_total", "Scan signals raised by the scan detector."),
    ("digests", "wrapalert_digests_total", "Digests made (one per due batch of groups)."),
)
GAUGES = (
    ("groups", "wrapalert_groups", "Groups the aggregator holds."),
    ("pending_events", "wrapalert_pending_events", "Events waiting for their group's digest."),
    ("outbox", "wrapalert_outbox_digests", "Digests in the outbox, queued or set aside."),
)
# Per sink: (key in status["sinks"][name], metric, type, help).
SINK_METRICS = (
    (
        "delivered",
        "wrapalert_sink_delivered_total",
        "counter",
        "Deliveries: digests for digest sinks, events for forwarding sinks.",
    ),
    (
        "failed",
        "wrapalert_sink_failed_total",
        "counter",
        "Permanent failures: digests for digest sinks, events for forwarding sinks.",
    ),
    ("events_delivered", "wrapalert_sink_events_delivered_total", "counter", "Events delivered."),
    ("events_failed", "wrapalert_sink_events_failed_total", "counter", "Events not delivered."),
    ("queued", "wrapalert_sink_queued", "gauge", "Digests or records waiting for the sink."),
    ("held", "wrapalert_sink_held_events", "gauge", "Events held back by the sink's rate limit."),
    (
        "held_failed",
        "wrapalert_sink_held_failed_digests",
        "gauge",
        "Digests set aside after a permanent failure (retried at a reload).",
    ),
)


def version() -> str:
    try:
        return metadata.version("wrapalert")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None


def render(status: Status, *, now: float, started: float, build: str | None = None) -> str:
    """The exposition text for one status object (pure: tested with plain values)."""
    return "".join(_lines(status, now=now, started=started, build=build or version()))


def _family(name: str, kind: str, text: str) -> str:
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


def _lines(status: Status, *, now: float, started: float, build: str) -> Iterator[str]:
    yield _family("wrapalert_build_info", "gauge", "Version of wrapalert and Python; always 1.")
    python = platform.python_version()
    yield f'wrapalert_build_info{{version="{escape(build)}",python="{python}"}} 1\n'
    yield _family("wrapalert_start_time_seconds", "gauge", "When the daemon started (Unix time).")
    yield f"wrapalert_start_time_seconds {started!r}\n"
    yield _family(
        "wrapalert_metrics_written_timestamp_seconds",
        "gauge",
        "When the daemon wrote this file (Unix time); stale means not running.",
    )
    yield f"wrapalert_metrics_written_timestamp_seconds {now!r}\n"
    for key, name, text in COUNTERS:
        yield _family(name, "counter", text)
        yield f"{name} {_number(status.get(key)) or 0}\n"
    rejected = status.get("rejected")
    yield _family(
        "wrapalert_events_rejected_total", "counter", "Datagrams or spool files rejected, by why."
    )
    yield from _by_reason("wrapalert_events_rejected_total", rejected)
    for key, name, text in GAUGES:
        yield _family(name, "gauge", text)
        yield f"{name} {_number(status.get(key)) or 0}\n"
    sinks = status.get("sinks")
    sinks = sinks if isinstance(sinks, Mapping) else {}
    for key, name, kind, text in SINK_METRICS:
        yield _family(name, kind, text)
        for sink, values in sorted(sinks.items()):
            value = _number(values.get(key)) if isinstance(values, Mapping) else None
            if value is not None:  # e.g. `held` exists for forwarding sinks only
                yield f'{name}{{sink="{escape(str(sink))}"}} {value}\n'
    yield _family(
        "wrapalert_sink_failing", "gauge", "1 while the sink's last attempt failed (retrying)."
    )
    for sink, values in sorted(sinks.items()):
        failing = isinstance(values, Mapping) and values.get("last_error") is not None
        yield f'wrapalert_sink_failing{{sink="{escape(str(sink))}"}} {int(failing)}\n'
    yield from _bans(status.get("bans"))
    yield from _fleet(status.get("bans"), status.get("fleet"))
    yield from _heartbeats(status.get("heartbeat"))
    yield from _evidence(status.get("evidence"))
    yield from _hook(status.get("hook"), status.get("notices"), status.get("canary_events"))
    state = status.get("state")
    ok = isinstance(state, Mapping) and state.get("ok") is True
    yield _family("wrapalert_state_ok", "gauge", "1 while the state database works, else 0.")
    yield f"wrapalert_state_ok {int(ok)}\n"


BAN_COUNTERS = (
    ("added", "wrapalert_bans_added_total", "Bans the nftables sink put in the kernel."),
    ("would_ban", "wrapalert_bans_dry_run_total", "Bans a dry-run nftables sink would have made."),
    ("expired", "wrapalert_bans_expired_total", "Bans that ran out."),
    ("lifted", "wrapalert_bans_lifted_total", "Bans lifted by hand (wrapalert ban del, flush)."),
)


def _bans(bans: object) -> Iterator[str]:
    """The nftables sink's bans, when it is configured (status has no mode otherwise)."""
    if not isinstance(bans, Mapping) or bans.get("mode") is None:
        return
    yield _family("wrapalert_bans_active", "gauge", "Bans in force in the kernel now.")
    yield f"wrapalert_bans_active {_number(bans.get('active')) or 0}\n"
    for key, name, text in BAN_COUNTERS:
        yield _family(name, "counter", text)
        yield f"{name} {_number(bans.get(key)) or 0}\n"
    refused = bans.get("refused")
    yield _family(
        "wrapalert_bans_refused_total",
        "counter",
        "Bans refused, by why (allowlisted, session, cap).",
    )
    yield from _by_reason("wrapalert_bans_refused_total", refused)
    yield _family(
        "wrapalert_bans_kernel_error",
        "gauge",
        "1 while the kernel refuses the ban table's changes.",
    )
    yield f"wrapalert_bans_kernel_error {int(bool(bans.get('last_error')))}\n"
    kernel = bans.get("kernel")
    if not isinstance(kernel, Mapping):
        return  # dry-run: the kernel is not asked
    yield _family(
        "wrapalert_bans_unenforced",
        "gauge",
        "Bans the book holds that the kernel did not drop at the last look (0 when in step).",
    )
    yield f"wrapalert_bans_unenforced {_number(kernel.get('missing')) or 0}\n"
    yield _family(
        "wrapalert_bans_kernel_repairs_total",
        "counter",
        "What the reconcile put back under a running daemon, by kind (table, declaration, "
        "missing, extra, expiry).",
    )
    yield from _by_reason("wrapalert_bans_kernel_repairs_total", kernel.get("repairs"))


FLEET_COUNTERS = (
    ("added", "wrapalert_bans_fleet_added_total", "Bans followed from the fleet (other hosts')."),
    (
        "ended",
        "wrapalert_bans_fleet_ended_total",
        "Followed bans that ended: the fleet lifted them, or their time ran out.",
    ),
)


def _fleet(bans: object, fleet: object) -> Iterator[str]:
    """The bans followed from the fleet, apart from this host's own; the fleet's peers."""
    book = bans.get("fleet") if isinstance(bans, Mapping) else None
    if isinstance(book, Mapping):
        yield _family(
            "wrapalert_bans_fleet_active", "gauge", "Bans followed from the fleet in force now."
        )
        yield f"wrapalert_bans_fleet_active {_number(book.get('active')) or 0}\n"
        for key, name, text in FLEET_COUNTERS:
            yield _family(name, "counter", text)
            yield f"{name} {_number(book.get(key)) or 0}\n"
        yield _family(
            "wrapalert_bans_fleet_refused_total",
            "counter",
            "Fleet bans this host's rules refused, by why (allowlisted, session, cap, wide).",
        )
        yield from _by_reason("wrapalert_bans_fleet_refused_total", book.get("refused"))
    if not isinstance(fleet, Mapping):
        return
    yield _family(
        "wrapalert_fleet_peer_up",
        "gauge",
        "1 while the fleet's Alertmanager peer took the last post or answered the last look.",
    )
    peers = fleet.get("peers")
    for peer, state in sorted(peers.items()) if isinstance(peers, Mapping) else ():
        up = isinstance(state, Mapping) and state.get("ok") is True
        yield f'wrapalert_fleet_peer_up{{peer="{escape(str(peer))}"}} {int(up)}\n'
    yield _family(
        "wrapalert_fleet_alerts_rejected_total",
        "counter",
        "The peers' ban alerts skipped as malformed, by why, counted at each look.",
    )
    yield from _by_reason("wrapalert_fleet_alerts_rejected_total", fleet.get("rejected"))
    if (looked := _number(fleet.get("looked"))) is not None:
        yield _family(
            "wrapalert_fleet_last_look_timestamp_seconds",
            "gauge",
            "When a peer last answered the look for the fleet's bans (Unix time).",
        )
        yield f"wrapalert_fleet_last_look_timestamp_seconds {looked}\n"


def _heartbeats(beats: object) -> Iterator[str]:
    """When each alertmanager sink's WrapalertHeartbeat last reached a peer."""
    if not isinstance(beats, Mapping):
        return
    name = "wrapalert_heartbeat_sent_timestamp_seconds"
    yield _family(name, "gauge", "When a peer last took the sink's WrapalertHeartbeat (Unix time).")
    for sink, state in sorted(beats.items()):
        sent = _number(state.get("sent")) if isinstance(state, Mapping) else None
        if sent is not None:
            yield f'{name}{{sink="{escape(str(sink))}"}} {sent}\n'


def _evidence(evidence: object) -> Iterator[str]:
    """What the kernel said of each event's source (daemon/witness.py), and whether it can
    answer at all (a unit without AF_NETLINK cannot: then nothing can ban)."""
    if not isinstance(evidence, Mapping):
        return
    name = "wrapalert_evidence_total"
    yield _family(name, "counter", "Accepted events by what the kernel vouched for, by outcome.")
    counts = {k: v for k, v in evidence.items() if k != "error"}
    yield from _by_reason(name, counts, label="outcome")
    yield _family(
        "wrapalert_evidence_ok", "gauge", "1 while the kernel answers evidence lookups, else 0."
    )
    yield f"wrapalert_evidence_ok {int(evidence.get('error') is None)}\n"


def _hook(hook: object, notices: object, canary_events: object) -> Iterator[str]:
    """Whether refusals reach the daemon (the alarm book), the canary's last success, the
    quiet daemons and the notices sent (daemon/alarm.py, canaries.py, quiet.py)."""
    if not isinstance(hook, Mapping):
        return
    yield _family(
        "wrapalert_hook_ok",
        "gauge",
        "1 while nothing stops refused connections reaching the daemon (the hook watch, the "
        "link check, the canary), else 0: the alarm is off.",
    )
    yield f"wrapalert_hook_ok {int(hook.get('ok') is not False)}\n"
    problems = hook.get("problems")
    yield _family("wrapalert_hook_problems", "gauge", "Open problems that stop refusals arriving.")
    yield f"wrapalert_hook_problems {len(problems) if isinstance(problems, list) else 0}\n"
    canary = hook.get("canary")
    success = canary.get("last_success") if isinstance(canary, Mapping) else None
    yield _family(
        "wrapalert_canary_last_success_timestamp_seconds",
        "gauge",
        "When wrapalert canary last proved the hook path end to end (Unix time; 0: never).",
    )
    yield f"wrapalert_canary_last_success_timestamp_seconds {_number(success) or 0}\n"
    yield _family(
        "wrapalert_canary_events_total",
        "counter",
        "The canary's refusals: counted apart, here only.",
    )
    yield f"wrapalert_canary_events_total {_number(canary_events) or 0}\n"
    quiet = hook.get("quiet")
    yield _family(
        "wrapalert_quiet_daemons",
        "gauge",
        "Daemons that used to be refused daily and have reported nothing for [hook] quiet_after.",
    )
    yield f"wrapalert_quiet_daemons {len(quiet) if isinstance(quiet, list) else 0}\n"
    name = "wrapalert_notices_total"
    yield _family(name, "counter", "Notices delivered (one per sink), by kind.")
    yield from _by_reason(name, notices, label="kind")


def _by_reason(name: str, counts: object, label: str = "reason") -> Iterator[str]:
    """One sample per reason of a {reason: count} object, the reason escaped as a label."""
    for reason, count in sorted(counts.items()) if isinstance(counts, Mapping) else ():
        if (value := _number(count)) is not None:
            yield f'{name}{{{label}="{escape(str(reason))}"}} {value}\n'


def write(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a temporary file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # 0644: node_exporter runs as another user and must read it. fchmod too, as the
        # open's mode passes through the umask (the unit's UMask=0077 would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# A few kilobytes to a local file, synchronously: as the state database is written.
class InForce(Protocol):
    """The config in force (daemon/reload.py's Reloader): a reload may change [metrics]."""

    @property
    def cfg(self) -> Config: ...


async def run(in_force: InForce, status: Callable[[], Status], clock: Clock) -> None:
    """Write the file every interval, for ever (a task of the daemon's TaskGroup)."""
    started = clock.now()
    written: Path | None = None
    failing = False
    build = version()
    while True:
        cfg = in_force.cfg.metrics  # read each time: a reload may change it
        if written is not None and written != cfg.textfile:
            remove(written)  # a file nobody updates would look like a dead daemon
            written = None
        if cfg.textfile is not None:
            try:
                write(cfg.textfile, render(status(), now=clock.now(), started=started, build=build))
            except OSError as exc:
                if not failing:
                    log.error("metrics_write_failed", path=str(cfg.textfile), error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("metrics_write_recovered", path=str(cfg.textfile))
                failing, written = False, cfg.textfile
        await clock.sleep(cfg.interval)
