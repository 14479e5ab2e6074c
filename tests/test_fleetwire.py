"""The fleet's wire alone (fleetwire.py): this host's bans as WrapalertBan alerts, and the
peers' answers read back as hostile input, then made this host's targets."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from wrapalert.banrule import BanRule
from wrapalert.fleetwire import (
    MAX_ALERTS,
    MAX_NAMED,
    FleetBan,
    FleetReplyError,
    Notice,
    Sighting,
    ban_alerts,
    fleet_reason,
    fleet_view,
    hosts_of,
    read_alerts,
    reason_label,
    rfc3339,
)

NOW = 1_800_000_000.0


def alert(
    host: str = "host-a", addr: str = "203.0.113.7", ends: float = NOW + 600, **labels: object
) -> dict[str, object]:
    """One ban alert as Alertmanager lists it (labels override)."""
    return {
        "annotations": {"summary": "x"},
        "endsAt": rfc3339(ends),
        "fingerprint": "c43ef38c319c08e9",
        "receivers": [{"name": "quiet"}],
        "startsAt": rfc3339(NOW - 60),
        "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
        "updatedAt": rfc3339(NOW - 1),
        "labels": {
            "alertname": "WrapalertBan",
            "client_addr": addr,
            "host": host,
            "reason": "threshold",
        }
        | labels,
    }


def read(*alerts: object) -> tuple[list[Sighting], dict[str, int]]:
    reading = read_alerts(json.dumps(list(alerts)).encode(), NOW)
    return reading.sightings, dict(reading.rejected)


def test_a_ban_is_an_alert_labelled_with_its_target_host_and_kind_of_proof() -> None:
    """Labels alertname, client_addr, host, reason (threshold, scan, manual) beside the static
    ones, which cannot replace ours; startsAt the ban's start, endsAt its expiry."""
    notices = [
        Notice("203.0.113.7", "10 refusals", NOW, NOW + 3600),
        Notice("2001:db8:1::/64", "scan of 3 daemons", NOW, NOW + 60),
        Notice("198.51.100.9", "by hand", NOW, NOW + 7200),
    ]
    alerts = ban_alerts(notices, host="web1", static={"env": "prod", "host": "forged"})
    labels = [a["labels"] for a in alerts]
    assert labels[0] == {
        "env": "prod",
        "alertname": "WrapalertBan",
        "client_addr": "203.0.113.7",
        "host": "web1",
        "reason": "threshold",
    }
    assert [x["reason"] for x in labels] == ["threshold", "scan", "manual"]  # type: ignore[index]
    assert alerts[0]["startsAt"] == rfc3339(NOW)
    assert alerts[0]["endsAt"] == rfc3339(NOW + 3600)
    assert alerts[0]["annotations"] == {
        "summary": f"203.0.113.7 banned on web1 (10 refusals), until {rfc3339(NOW + 3600)}",
        "detail": "10 refusals",
    }


def test_a_lifted_ban_is_posted_resolved_at_its_lifting() -> None:
    """A lift ends the alert now: endsAt is when it was lifted, never after its expiry."""
    (lifted,) = ban_alerts(
        [Notice("203.0.113.7", "10 refusals", NOW, NOW + 3600, NOW + 5)], host="h", static={}
    )
    assert lifted["endsAt"] == rfc3339(NOW + 5)
    assert "lifted" in str(lifted["annotations"])


def test_a_fleet_reason_names_its_hosts_and_reads_back() -> None:
    """ "fleet: banned on H1, H2" is how a followed ban says its hosts (saved with it)."""
    reason = fleet_reason(("host-a", "host-b"))
    assert reason == "fleet: banned on host-a, host-b"
    assert hosts_of(reason) == ("host-a", "host-b")
    assert hosts_of("10 refusals") is None
    assert reason_label("by hand") == "manual"


def test_the_active_ban_alerts_of_an_answer_are_read() -> None:
    """Each well-formed ban alert is a sighting: host, address, end."""
    sightings, rejected = read(alert(), alert("host-b", "2001:db8::1", NOW + 60))
    assert sightings == [
        Sighting("host-a", "203.0.113.7", NOW + 600),
        Sighting("host-b", "2001:db8::1", NOW + 60),
    ]
    assert rejected == {}


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ("a string", "bad_labels"),
        ({"labels": ["alertname"]}, "bad_labels"),
        (alert(client_addr=7), "bad_labels"),  # a number where a string belongs
        (alert(alertname="WrapalertRefused"), "not_a_ban"),
        (alert(host="web 1"), "bad_host"),
        (alert(host="-x"), "bad_host"),
        (alert(host="h\x1b[31m"), "bad_host"),
        (alert(host=""), "bad_host"),
        (alert(addr="203.0.113.300"), "bad_client_addr"),
        (alert(addr="fe80::1%eth0"), "bad_client_addr"),  # no zones
        (alert(addr="example.org"), "bad_client_addr"),
        (alert(addr=" 203.0.113.7"), "bad_client_addr"),
        (alert(addr="1" * 60), "bad_client_addr"),
        (alert() | {"endsAt": "tomorrow"}, "bad_ends_at"),
        (alert() | {"endsAt": "2027-01-01"}, "bad_ends_at"),  # no time, no zone
        (alert() | {"endsAt": "2027-01-01T00:00:00"}, "bad_ends_at"),  # no zone
        (alert() | {"endsAt": 1_900_000_000}, "bad_ends_at"),
        (alert() | {"endsAt": "2" * 100}, "bad_ends_at"),
    ],
)
def test_a_malformed_alert_is_skipped_and_counted(item: object, why: str) -> None:
    """Hostile or broken alerts never raise: each is skipped, counted by why, and the good
    ones beside it still count."""
    sightings, rejected = read(item, alert())
    assert rejected == {why: 1}
    assert sightings == [Sighting("host-a", "203.0.113.7", NOW + 600)]


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'"x"', b"\xff\xfe", b"[" * 100_000, b'{"alerts": []}', b"nul\x00"]
)
def test_an_answer_that_is_not_a_list_of_alerts_is_refused_whole(body: bytes) -> None:
    """Not JSON, not a list, or nested past the parser's depth: one FleetReplyError."""
    with pytest.raises(FleetReplyError):
        read_alerts(body, NOW)


def test_ended_alerts_are_left_out_and_far_too_many_are_counted() -> None:
    """An alert past its endsAt is no ban (not a malformed one); past MAX_ALERTS, the rest
    of an answer is counted, not read."""
    sightings, rejected = read(alert(ends=NOW - 1))
    assert (sightings, rejected) == ([], {})
    many = [
        alert(addr=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(MAX_ALERTS + 3)
    ]
    reading = read_alerts(json.dumps(many).encode(), NOW)
    assert len(reading.sightings) == MAX_ALERTS
    assert reading.rejected == {"too_many": 3}


def test_a_times_zone_and_fraction_are_read_as_alertmanager_writes_them() -> None:
    """Go writes milliseconds or nanoseconds and any zone: each is the same instant."""
    for text in (
        "2027-06-01T08:00:00Z",
        "2027-06-01T08:00:00.000000000Z",
        "2027-06-01T09:00:00+01:00",
    ):
        sightings, _ = read(alert() | {"endsAt": text})
        assert sightings[0].until == datetime.fromisoformat("2027-06-01T08:00:00+00:00").timestamp()


def test_the_view_takes_other_hosts_bans_as_this_hosts_targets() -> None:
    """This host's own alerts are not followed (no echo); an IPv6 address or a narrower
    network becomes this host's ipv6_prefix network, a NAT64 source its single address;
    a network wider than ban add takes without --force is "wide"; each target has every
    host that banned it and the latest end."""
    rule = BanRule(ipv6_prefix=56)
    view = fleet_view(
        [
            Sighting("me", "198.51.100.1", NOW + 9),
            Sighting("host-a", "203.0.113.7", NOW + 60),
            Sighting("host-b", "203.0.113.7", NOW + 600),
            Sighting("host-b", "::ffff:203.0.113.7", NOW + 30),
            Sighting("host-a", "2001:db8:0:12::5", NOW + 60),
            Sighting("host-c", "2001:db8:0:34::/64", NOW + 90),
            Sighting("host-a", "64:ff9b::c633:6407", NOW + 60),
            Sighting("host-a", "203.0.113.0/24", NOW + 60),
            Sighting("host-a", "2001:db8::/32", NOW + 60),
        ],
        rule,
        me="me",
    )
    assert view.bans == {
        "203.0.113.7": FleetBan(("host-a", "host-b"), NOW + 600),
        "2001:db8::/56": FleetBan(("host-a", "host-c"), NOW + 90),
        "64:ff9b::c633:6407/128": FleetBan(("host-a",), NOW + 60),
    }
    assert set(view.wide) == {"203.0.113.0/24", "2001:db8::/32"}


def test_a_ban_by_many_hosts_names_a_few_and_counts_the_rest() -> None:
    """A forged answer naming 5,000 hosts for one address: the ban names MAX_NAMED of them
    and counts the rest (its reason stays short and reads back those named); every host
    still counts toward `min_hosts`."""
    sightings = [Sighting(f"h{i:04}", "203.0.113.7", NOW + 60) for i in range(5000)]
    view = fleet_view(sightings, BanRule(), me="me", min_hosts=5000)
    ban = view.bans["203.0.113.7"]
    assert ban.hosts == tuple(f"h{i:04}" for i in range(MAX_NAMED))
    assert ban.more == 5000 - MAX_NAMED
    assert ban.reason.endswith(f"h{MAX_NAMED - 1:04}, and {5000 - MAX_NAMED} more")
    assert len(ban.reason) < 200
    assert hosts_of(ban.reason) == ban.hosts


def test_the_view_keeps_fleet_hosts_only_and_waits_for_min_hosts() -> None:
    """`fleet_hosts` drops other hosts' bans; a target fewer than `min_hosts` hosts banned
    waits (counted, not followed)."""
    sightings = [
        Sighting("host-a", "203.0.113.7", NOW + 60),
        Sighting("host-z", "203.0.113.7", NOW + 60),
        Sighting("host-z", "203.0.113.8", NOW + 60),
        Sighting("host-a", "203.0.113.9", NOW + 60),
    ]
    only_a = fleet_view(sightings, BanRule(), me="me", hosts=frozenset({"host-a"}))
    assert set(only_a.bans) == {"203.0.113.7", "203.0.113.9"}
    assert only_a.bans["203.0.113.7"].hosts == ("host-a",)
    two = fleet_view(sightings, BanRule(), me="me", min_hosts=2)
    assert set(two.bans) == {"203.0.113.7"}
    assert two.waiting == 2
