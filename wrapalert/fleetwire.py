"""The fleet's wire: this host's bans as `WrapalertBan` alerts, and the peers' alerts read
back into the bans another host made. Pure (no I/O, no clock: `now` is given).

Out (`ban_alerts`): one alert per ban, labels `alertname="WrapalertBan"`,
`client_addr` (the target, as the other alerts name a source), `host` and
`reason` (threshold, scan or manual: what kind of proof), plus the sink's
static labels; `startsAt` the ban's start, `endsAt` its expiry, or the moment
it was lifted (a resolution). Bans this host follows are never among them (no
echo).

In (`read_alerts`): what a peer's `GET /api/v2/alerts` answered. Every byte is
untrusted: whoever holds a fleet credential can post alerts, and a peer may be
hostile or broken. The reply is JSON of at most MAX_REPLY bytes (the HTTP
client stops reading past it); at most MAX_ALERTS alerts are looked at; an
alert whose labels are not strings, whose `host` is not a host name, whose
`client_addr` is not an address or network, or whose `endsAt` is not an RFC
3339 time is skipped and counted by reason, never raised.

`fleet_view` then turns the sightings into the bans this host would follow:
another host's only (never its own), from `fleet_hosts` only when set, the
address made a target by this host's own rule (banrule.py: an IPv6 source by
this host's `ipv6_prefix`, shared NAT64/Teredo/6to4 prefixes by single
address; a network wider than what `ban add` takes without `--force` is
"wide", never banned), one ban per target with every host that banned it and
the latest end, once at least `min_hosts` hosts did.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from wrapalert.banrule import BanRule, BanTargetError
from wrapalert.confparse import HOSTNAME

BAN_ALERT = "WrapalertBan"
# Bytes of one peer's answer read at most. One ban alert as Alertmanager 0.25 lists it is
# about 450 bytes (labels, annotations, status, receivers): some 18,000 bans.
MAX_REPLY = 8 * 1024 * 1024
MAX_ALERTS = 50_000  # alerts of one answer looked at; the rest counted "too_many"
MAX_TIME_TEXT = 40  # characters of an RFC 3339 time ("2026-12-06T04:18:56.305123456+00:00")
FLEET_PREFIX = "fleet: banned on "  # the reason of a ban this host follows
# Hosts a fleet ban names (in its reason, saved, noted, shown); the rest are counted. A
# forged answer may name thousands of hosts for one address: no reason grows with it.
MAX_NAMED = 16

Alert = dict[str, object]


class FleetReplyError(ValueError):
    """A peer's answer is not a JSON list of alerts at all."""


def reason_label(reason: str) -> str:
    """The `reason` label of a ban of this host's: what kind of proof made it."""
    if reason == "by hand":
        return "manual"
    return "scan" if reason.startswith("scan") else "threshold"


def fleet_reason(hosts: Iterable[str], more: int = 0) -> str:
    """The reason of a ban this host follows: "fleet: banned on H1, H2" (", and 3 more"
    past MAX_NAMED hosts)."""
    return FLEET_PREFIX + ", ".join(hosts) + (f", and {more} more" if more else "")


def hosts_of(reason: str) -> tuple[str, ...] | None:
    """The hosts a followed ban's reason names; None for a ban of this host's own."""
    if not reason.startswith(FLEET_PREFIX):
        return None
    return tuple(h for h in reason.removeprefix(FLEET_PREFIX).split(", ") if HOSTNAME.fullmatch(h))


@dataclass(frozen=True)
class Notice:
    """One of this host's bans as the fleet should hold it: in force until `until`, or
    lifted at `ended` (then posted as resolved, until `until` has passed too)."""

    target: str
    reason: str  # the ban's own ("10 refusals", "scan of 3 daemons", "by hand")
    since: float
    until: float
    ended: float | None = None

    @property
    def label(self) -> str:
        return reason_label(self.reason)


def ban_alerts(notices: Iterable[Notice], *, host: str, static: dict[str, str]) -> list[Alert]:
    """The WrapalertBan alerts for `notices` (targets and reasons are ours: validated)."""
    alerts: list[Alert] = []
    for n in notices:
        ends = n.until if n.ended is None else min(n.ended, n.until)
        what = "lifted" if n.ended is not None else f"until {rfc3339(n.until)}"
        alerts.append(
            {
                "labels": {
                    **static,
                    "alertname": BAN_ALERT,
                    "client_addr": n.target,
                    "host": host,
                    "reason": n.label,
                },
                "annotations": {
                    "summary": f"{n.target} banned on {host} ({n.reason}), {what}",
                    "detail": n.reason,
                },
                "startsAt": rfc3339(n.since),
                "endsAt": rfc3339(ends),
            }
        )
    return alerts


@dataclass(frozen=True)
class Sighting:
    """A ban another host announced: its host, the address or network it named (checked
    to be one), and when it ends."""

    host: str
    addr: str
    until: float


@dataclass
class Reading:
    """What one answer held: the sightings, and the alerts skipped, by reason."""

    sightings: list[Sighting] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)


def read_alerts(body: bytes, now: float) -> Reading:
    """The active WrapalertBan alerts in a peer's answer (FleetReplyError: not a JSON list
    at all). Each malformed alert is skipped and counted; one that has ended is left out."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FleetReplyError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(data, list):
        raise FleetReplyError("not a list of alerts")
    reading = Reading()
    if len(data) > MAX_ALERTS:
        reading.rejected["too_many"] += len(data) - MAX_ALERTS
    for item in data[:MAX_ALERTS]:
        sighting = _sighting(item, reading.rejected)
        if sighting is not None and sighting.until > now:
            reading.sightings.append(sighting)
    return reading


def _sighting(item: object, rejected: Counter[str]) -> Sighting | None:
    labels = item.get("labels") if isinstance(item, dict) else None
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        rejected["bad_labels"] += 1
        return None
    if labels.get("alertname") != BAN_ALERT:
        rejected["not_a_ban"] += 1  # the filter asked for these only: a peer that ignores it
        return None
    host = labels.get("host", "")
    if not HOSTNAME.fullmatch(host):
        rejected["bad_host"] += 1
        return None
    addr = labels.get("client_addr", "")
    if not _network(addr):
        rejected["bad_client_addr"] += 1
        return None
    assert isinstance(item, dict)  # noqa: S101 - labels came from it
    until = _moment(item.get("endsAt"))
    if until is None:
        rejected["bad_ends_at"] += 1
        return None
    return Sighting(host, addr, until)


def _network(text: str) -> bool:
    """Whether `text` is an address or network as Alertmanager labels carry them (no
    zone, no spaces, bounded)."""
    if not 2 <= len(text) <= 49 or not all(c in "0123456789abcdefABCDEF.:/" for c in text):
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _moment(value: object) -> float | None:
    """Seconds from an RFC 3339 time with a zone; None for anything else."""
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


@dataclass(frozen=True)
class FleetBan:
    """A ban to follow here: the hosts that banned the target, and the latest end."""

    hosts: tuple[str, ...]  # sorted, the first MAX_NAMED
    until: float
    more: int = 0  # hosts past MAX_NAMED that banned it too

    @property
    def reason(self) -> str:
        return fleet_reason(self.hosts, self.more)


@dataclass
class View:
    """The fleet's bans as this host's rules read them."""

    bans: dict[str, FleetBan] = field(default_factory=dict)  # target -> the ban to follow
    wide: dict[str, FleetBan] = field(default_factory=dict)  # named network -> its ban
    waiting: int = 0  # targets fewer than min_hosts hosts banned yet


def fleet_view(
    sightings: Iterable[Sighting],
    rule: BanRule,
    *,
    me: str,
    hosts: frozenset[str] | None = None,
    min_hosts: int = 1,
) -> View:
    """The bans to follow: other hosts' (from `hosts` only, when given), each address
    made this host's target, at least `min_hosts` hosts per target."""
    seen: dict[str, dict[str, float]] = {}  # target -> host -> until
    wide: dict[str, dict[str, float]] = {}
    for s in sightings:
        if s.host == me or (hosts is not None and s.host not in hosts):
            continue
        try:
            target = rule.parse_target(s.addr)
        except BanTargetError:  # wider than this host bans without --force
            bucket = wide.setdefault(s.addr, {})
        else:
            bucket = seen.setdefault(target, {})
        bucket[s.host] = max(bucket.get(s.host, 0.0), s.until)
    view = View(wide={addr: _ban(by) for addr, by in wide.items()})
    for target, by in seen.items():
        if len(by) >= min_hosts:
            view.bans[target] = _ban(by)
        else:
            view.waiting += 1
    return view


def _ban(by: dict[str, float]) -> FleetBan:
    names = sorted(by)
    return FleetBan(tuple(names[:MAX_NAMED]), max(by.values()), max(0, len(names) - MAX_NAMED))


def rfc3339(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Alertmanager writes it."""
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
