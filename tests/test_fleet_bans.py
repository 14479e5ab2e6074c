"""Bans shared through Alertmanager, end to end: a real two-peer cluster behind
`--web.config.file` basic auth and three daemons (`wrapalert run`, each with its own host
name and nftables table), all in one private network namespace. A source is banned on
host-a by real refusals (each a real TCP connection, as the ban rule demands); the tests
read the other hosts' kernel sets, their `ban` commands and their status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from amcluster import USER, Cluster, password_file, require_alertmanager
from helpers import wait_until
from nftns import Daemon, Daemons, Netns, elements, require_netns

from wrapalert.fleetwire import rfc3339

pytestmark = pytest.mark.system

INTERVAL = 2.0  # follow_interval of every host, seconds
SOURCE = "203.0.113.41"  # refused on host-a until banned there


@dataclass
class Lab:
    """The namespace, the cluster, the daemons and the fleet's password file."""

    ns: Netns
    cluster: Cluster
    daemons: Daemons
    password: Path

    def host(self, name: str, nft: str = "", *, follow: bool = True) -> Daemon:
        """A daemon named `name` (its table too) in the fleet: it publishes its bans to
        both peers and (`follow`) follows the others'."""
        table = name.replace("-", "_")
        keys = (
            f'table = "{table}"\nthreshold = 3\nfleet = "am"\n'
            f'follow = {"true" if follow else "false"}\nfollow_interval = "{INTERVAL:g}s"\n{nft}'
        )
        am = (
            f'[[sink]]\ntype = "alertmanager"\nname = "am"\nurls = {self.cluster.urls}\n'
            f'username = "{USER}"\npassword_file = "{self.password}"\n'
        )
        daemon = self.daemons(keys, start=False, extra=am)
        text = daemon.config.read_text()
        daemon.config.write_text(text.replace("[daemon]\n", f'[daemon]\nhostname = "{name}"\n', 1))
        daemon.start()
        return daemon

    def post_ban(self, host: str, addr: str, seconds: float = 600.0, **kw: Any) -> int:
        """Post a WrapalertBan as `host` would, to the first peer; the HTTP status."""
        now = time.time()
        alert = {
            "labels": {
                "alertname": "WrapalertBan",
                "client_addr": addr,
                "host": host,
                "reason": "threshold",
            },
            "annotations": {"summary": f"{addr} banned on {host}"},
            "startsAt": rfc3339(now),
            "endsAt": rfc3339(now + seconds),
        }
        return self.cluster.api.post(self.cluster.peers[0], [alert], **kw)


def banned(lab: Lab, daemon: Daemon, addr: str) -> bool:
    """Whether the daemon's table (named after its host) drops `addr` in the kernel."""
    host = daemon.config.read_text().split('hostname = "', 1)[1].split('"', 1)[0]
    return addr in elements(lab.ns, host.replace("-", "_"))


def fleet_status(daemon: Daemon) -> dict[str, Any]:
    status = daemon.status()
    fleet: dict[str, Any] = status["fleet"]
    return fleet | {"book": status["bans"]["fleet"]}


def looked_after(daemon: Daemon, moment: float) -> None:
    """Wait for a look at the fleet that began after `moment` (one that ended an interval
    after it did: looks are an interval apart)."""
    wait_until(
        lambda: (fleet_status(daemon)["looked"] or 0) > moment + INTERVAL + 0.5,
        5 * INTERVAL,
        "a look at the fleet",
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_netns()
    require_alertmanager()
    ns = Netns()
    daemons = Daemons(tmp_path / "hosts", ns)
    cluster = None
    try:
        cluster = Cluster(tmp_path / "am", ns)
        yield Lab(ns, cluster, daemons, password_file(tmp_path))
    finally:
        daemons.close()
        if cluster is not None:
            cluster.stop()
        ns.close()


def test_a_ban_on_one_host_reaches_the_others_kernels_within_two_intervals(lab: Lab) -> None:
    """host-a bans a source from its own refusals; host-b's and host-c's kernel sets hold
    it within two follow intervals of host-a's, with the reason naming host-a, listed
    apart (`ban list --fleet`), and host-a does not follow its own ban back."""
    a, b, c = lab.host("host-a"), lab.host("host-b"), lab.host("host-c")
    a.report(SOURCE, 3)
    wait_until(lambda: banned(lab, a, SOURCE), 10, "host-a's ban")
    start = time.monotonic()
    wait_until(
        lambda: banned(lab, b, SOURCE) and banned(lab, c, SOURCE),
        2 * INTERVAL + 5,
        "host-b's and host-c's bans",
    )
    took = time.monotonic() - start
    assert took <= 2 * INTERVAL, f"{took:.2f}s"
    for follower in (b, c):
        (ban,) = json.loads(follower.ban("list", "--fleet", "--json").stdout)
        assert (ban["target"], ban["origin"], ban["hosts"]) == (SOURCE, "fleet", ["host-a"])
        assert ban["reason"] == "fleet: banned on host-a"
        assert json.loads(follower.ban("list", "--json").stdout) == []  # none of its own
        text = follower.ban("list").stdout
        assert "and 1 ban(s) followed from the fleet: wrapalert ban list --fleet" in text
        assert fleet_status(follower)["book"]["active"] == 1
    (own,) = json.loads(a.ban("list", "--json").stdout)
    assert (own["origin"], own["reason"]) == ("local", "3 refusals")
    assert json.loads(a.ban("list", "--fleet", "--json").stdout) == []
    alerts = lab.cluster.api.alerts(lab.cluster.peers[1], 'alertname="WrapalertBan"')
    assert [(x["labels"]["host"], x["labels"]["client_addr"]) for x in alerts] == [
        ("host-a", SOURCE)
    ]


def test_with_one_peer_killed_a_ban_still_propagates(lab: Lab) -> None:
    """The first peer of every host's list is down: the ban goes through the second."""
    a, b, c = lab.host("host-a"), lab.host("host-b"), lab.host("host-c")
    lab.cluster.peers[0].stop()
    a.report(SOURCE, 3)
    wait_until(
        lambda: banned(lab, b, SOURCE) and banned(lab, c, SOURCE),
        10 * INTERVAL,
        "host-b's and host-c's bans",
    )
    peers = fleet_status(a)["peers"]
    assert peers[lab.cluster.peers[0].url]["ok"] is False
    assert peers[lab.cluster.peers[1].url]["ok"] is True
    assert a.cli("status").returncode == 0  # one live peer is enough


def test_ban_del_on_the_banning_host_lifts_it_everywhere(lab: Lab) -> None:
    """`ban del` on host-a resolves its alert: host-b and host-c lift their bans."""
    a, b, c = lab.host("host-a"), lab.host("host-b"), lab.host("host-c")
    a.report(SOURCE, 3)
    wait_until(lambda: banned(lab, b, SOURCE) and banned(lab, c, SOURCE), 30, "the bans")
    assert a.ban("del", SOURCE).returncode == 0
    wait_until(
        lambda: not banned(lab, b, SOURCE) and not banned(lab, c, SOURCE),
        2 * INTERVAL + 5,
        "the lifts",
    )
    assert fleet_status(b)["book"]["ended"] == 1
    assert lab.cluster.api.alerts(lab.cluster.peers[0], 'alertname="WrapalertBan"') == []


def test_a_fleet_ban_lifted_by_hand_stays_lifted_while_the_fleet_keeps_it(lab: Lab) -> None:
    """`ban del` of a followed ban on host-b: it leaves host-b's kernel and is not followed
    again while host-a keeps banning, also after host-b restarts."""
    a, b = lab.host("host-a"), lab.host("host-b")
    a.report(SOURCE, 3)
    wait_until(lambda: banned(lab, b, SOURCE), 30, "host-b's ban")
    assert b.ban("del", SOURCE).returncode == 0
    assert not banned(lab, b, SOURCE)
    b.proc.stop()
    b.start()
    looked_after(b, time.time())
    assert not banned(lab, b, SOURCE)
    assert banned(lab, a, SOURCE)
    assert fleet_status(b)["book"]["exceptions"] == 1


def test_an_alert_posted_without_the_fleets_credentials_is_refused(lab: Lab) -> None:
    """Whoever lacks the password cannot post a ban: 401, and nothing reaches a peer."""
    assert lab.post_ban("host-z", SOURCE, auth=("", "")) == 401
    assert lab.post_ban("host-z", SOURCE, auth=(USER, "guess")) == 401
    assert lab.cluster.api.alerts(lab.cluster.peers[0], 'alertname="WrapalertBan"') == []


def test_a_fleet_ban_of_an_address_a_host_allows_is_not_made_there(lab: Lab) -> None:
    """A ban posted with the credentials (a host whose password leaked) bans on host-b,
    but not on host-c, whose allowlist holds the address: counted as refused there."""
    b = lab.host("host-b")
    c = lab.host("host-c", f'allow = ["{SOURCE}/32"]')
    assert lab.post_ban("host-z", SOURCE) == 200
    wait_until(lambda: banned(lab, b, SOURCE), 2 * INTERVAL + 5, "host-b's ban")
    wait_until(lambda: fleet_status(c)["book"]["refused"] == {"allowlisted": 1}, 10, "the refusal")
    assert not banned(lab, c, SOURCE)
    looked_after(c, time.time())
    assert fleet_status(c)["book"]["refused"] == {"allowlisted": 1}  # counted once


def test_fleet_hosts_and_fleet_min_hosts_hold(lab: Lab) -> None:
    """host-b follows host-a only; host-c only what two hosts banned. A ban by host-z
    alone bans on neither; once host-a bans too, both follow it."""
    b = lab.host("host-b", 'fleet_hosts = ["host-a"]')
    c = lab.host("host-c", "fleet_min_hosts = 2")
    posted = time.time()
    assert lab.post_ban("host-z", SOURCE) == 200
    looked_after(b, posted)
    looked_after(c, posted)
    assert not banned(lab, b, SOURCE)
    assert not banned(lab, c, SOURCE)
    assert fleet_status(c)["waiting"] == 1
    assert lab.post_ban("host-a", SOURCE) == 200
    wait_until(
        lambda: banned(lab, b, SOURCE) and banned(lab, c, SOURCE), 2 * INTERVAL + 5, "the bans"
    )
    (on_b,) = json.loads(b.ban("list", "--fleet", "--json").stdout)
    (on_c,) = json.loads(c.ban("list", "--fleet", "--json").stdout)
    assert on_b["hosts"] == ["host-a"]
    assert on_c["hosts"] == ["host-a", "host-z"]
    assert on_c["reason"] == "fleet: banned on host-a, host-z"
