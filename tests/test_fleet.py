"""Fleet correlation: the shipped Alertmanager configuration, checked by amtool and run in a
real two-peer Alertmanager cluster fed by three wrapalert daemons with different host names;
and the fleet's ban sharing part (daemon/fleet.py) alone, against peers of the test's own
(tests/test_fleet_bans.py runs it end to end)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    HttpServer,
    Reply,
    Running,
    SmtpServer,
    client,
    free_port,
    http_get,
    maildir_messages,
    report_through_daemon,
    require,
    wait_until,
    write_config,
)

from wrapalert import config
from wrapalert.banrule import BanRule
from wrapalert.clock import SystemClock
from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.fleet import Fleet, FleetSettings
from wrapalert.daemon.server import Server
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.fleetwire import MAX_REPLY, rfc3339
from wrapalert.pipeline.forward import _events, scan_record
from wrapalert.scanrule import ScanSignal
from wrapalert.shield import Shield
from wrapalert.sinks.alertmanager import AlertmanagerSink, AlertmanagerSinkConfig, build_alerts
from wrapalert.sinks.amapi import Access
from wrapalert.sinks.base import TransientSinkError
from wrapalert.sinks.nftables import NftablesSink, NftablesSinkConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "packaging" / "examples"
BINARY = "prometheus-alertmanager"
HOSTS = ("host-a", "host-b", "host-c")
EVERYWHERE = "203.0.113.10"  # refused on all three hosts
ONE_HOST = "198.51.100.20"  # refused on host-a only
SCANNER = "192.0.2.30"  # tries three daemons on host-b (a scan), one on host-c
PEER_TIMEOUT = 2.0  # seconds the second peer waits for the first one's notification log


def amtool() -> str:
    path = shutil.which("amtool")
    require(path is not None, "amtool not found (apt-get install prometheus-alertmanager)")
    assert path is not None
    return path


@pytest.mark.system
def test_example_alertmanager_config_passes_amtool() -> None:
    """The shipped alertmanager.yml, its template included, passes `amtool check-config`."""
    done = subprocess.run(
        [amtool(), "check-config", str(EXAMPLES / "alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 inhibit rules" in done.stdout
    assert "1 templates" in done.stdout


@pytest.mark.system
def test_a_broken_template_fails_amtool(tmp_path: Path) -> None:
    """amtool is a real check here: the same config with a template that does not parse fails."""
    shutil.copy(EXAMPLES / "alertmanager.yml", tmp_path)
    text = (EXAMPLES / "wrapalert.tmpl").read_text()
    (tmp_path / "wrapalert.tmpl").write_text(text.replace("{{- end }}", "", 1))
    done = subprocess.run(
        [amtool(), "check-config", str(tmp_path / "alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; the example must still hold it exactly once."""
    assert text.count(old) == 1, f"the example no longer holds {old!r} once"
    return text.replace(old, new)


def cluster_config(base: Path, smtp_port: int, hook_url: str) -> Path:
    """The shipped example, with its mail sent to the test's SMTP server, a webhook of the
    test's own added to its receiver, and a group_wait a test can afford."""
    text = (EXAMPLES / "alertmanager.yml").read_text()
    text = replace_once(
        text, "smtp_smarthost: localhost:25", f"smtp_smarthost: 127.0.0.1:{smtp_port}"
    )
    text = replace_once(text, "group_wait: 30s", "group_wait: 2s")
    text = replace_once(
        text,
        "  - name: wrapalert-fleet\n    email_configs:\n",
        f"  - name: wrapalert-fleet\n    webhook_configs:\n      - url: {hook_url}\n"
        "    email_configs:\n",
    )
    shutil.copy(EXAMPLES / "wrapalert.tmpl", base)
    path = base / "alertmanager.yml"
    path.write_text(text)
    return path


class Peer:
    """One member of a real Alertmanager cluster on loopback (PLATFORM.md's recipe)."""

    def __init__(self, base: Path, config_path: Path, cluster: int, other: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "alertmanager.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    BINARY,
                    f"--config.file={config_path}",
                    f"--storage.path={base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--cluster.listen-address=127.0.0.1:{cluster}",
                    f"--cluster.peer=127.0.0.1:{other}",
                    "--cluster.settle-timeout=2s",
                    f"--cluster.peer-timeout={PEER_TIMEOUT:g}s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def peers(self) -> int:
        """How many members this peer sees in a ready cluster (0 until it is ready)."""
        assert self.proc.poll() is None, self.log.read_text()
        try:
            status = json.loads(http_get(f"{self.url}/api/v2/status", timeout=1))
        except OSError:
            return 0
        cluster = status.get("cluster", {})
        return len(cluster.get("peers") or []) if cluster.get("status") == "ready" else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[Peer], HttpServer, Path]]:
    """Two gossiping Alertmanagers on the example config, a webhook receiver, and the
    config's directory (its SMTP port is filled in by the test through `smtp.port`)."""
    amtool()
    require(shutil.which(BINARY) is not None, f"{BINARY} not found (apt-get install {BINARY})")
    with HttpServer() as hook:
        yield [], hook, tmp_path


def notifications(hook: HttpServer) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in hook.requests if r.path == "/hook"]


async def feed(servers: dict[str, Server], reports: list[tuple[str, str, str]]) -> None:
    """One refusal per (host, daemon, address), through the real client to that host."""
    for host, daemon, addr in reports:
        sock = f"socket={servers[host].cfg.daemon.socket}"
        await asyncio.to_thread(client, f"d={daemon}", f"a={addr}", sock)


@pytest.mark.system
def test_one_fleet_notification_per_source_across_a_two_peer_cluster(
    cluster: tuple[list[Peer], HttpServer, Path], sockdir: Path
) -> None:
    """Three daemons, each with its own [daemon] hostname, post to both peers: the receiver
    gets one notification for the source refused everywhere naming all three hosts, one for
    the source seen on one host, one for the scanner (its scan alert muting that host's
    plain refusals), and no duplicate although both peers got every alert."""
    peers, hook, base = cluster

    async def scenario() -> tuple[list[dict[str, Any]], list[Any]]:
        async with SmtpServer() as smtp:
            am_config = cluster_config(base, smtp.port, hook.url("/hook"))
            ports = [free_port(), free_port()]
            for i in range(2):
                (base / f"peer{i}").mkdir()
                peers.append(Peer(base / f"peer{i}", am_config, ports[i], ports[1 - i]))
            await asyncio.to_thread(
                wait_until,
                lambda: all(p.peers() == 2 for p in peers),
                60,
                "a ready two-peer cluster",
            )
            urls = ", ".join(f'"{p.url}"' for p in peers)
            servers = {}
            for host in HOSTS:
                home = sockdir / host
                home.mkdir()
                path = write_config(
                    home,
                    sinks=f'[[sink]]\ntype = "alertmanager"\nurls = [{urls}]\n',
                    digests=False,
                )
                text = replace_once(
                    path.read_text(), "[daemon]\n", f'[daemon]\nhostname = "{host}"\n'
                )
                path.write_text(text)
                servers[host] = Server(config.load(path))
            async with (
                Running(servers["host-a"]),
                Running(servers["host-b"]),
                Running(servers["host-c"]),
            ):
                await feed(
                    servers,
                    [
                        ("host-b", "sshd", SCANNER),
                        ("host-b", "vsftpd", SCANNER),
                        ("host-b", "exim", SCANNER),
                        ("host-c", "sshd", SCANNER),
                        *[(host, "sshd", EVERYWHERE) for host in HOSTS],
                        ("host-a", "sshd", ONE_HOST),
                    ],
                )
                await asyncio.to_thread(
                    wait_until, lambda: len(notifications(hook)) >= 3, 60, "3 notifications"
                )
                # The second peer sends only after PEER_TIMEOUT, if its log lacks ours.
                await asyncio.sleep(3 * PEER_TIMEOUT + 2)
                mails = await smtp.handler.wait(3)
                return notifications(hook), list(mails)

    try:
        sent, mails = asyncio.run(scenario())
    finally:
        for peer in peers:
            peer.stop()
    by_source = {n["groupLabels"]["client_addr"]: n for n in sent}
    assert len(sent) == 3, [n["groupLabels"] for n in sent]
    assert set(by_source) == {EVERYWHERE, ONE_HOST, SCANNER}

    def seen(addr: str) -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["host"]) for a in by_source[addr]["alerts"]}

    assert seen(EVERYWHERE) == {("WrapalertRefused", host) for host in HOSTS}
    assert seen(ONE_HOST) == {("WrapalertRefused", "host-a")}
    assert seen(SCANNER) == {("WrapalertScan", "host-b"), ("WrapalertRefused", "host-c")}
    (mail,) = [m for m in mails if EVERYWHERE in str(m["Subject"])]
    part = mail.get_body(("plain",))
    assert part is not None
    body = part.get_content()
    for host in HOSTS:
        assert f"{host}  sshd  1 event(s)  since " in body
    assert str(mail["Subject"]) == f"[wrapalert] {EVERYWHERE}: 3 alerts"


def test_hostname_defaults_to_the_systems() -> None:
    """Without `[daemon] hostname` digests and labels use the system's host name."""
    assert config.loads("[daemon]\n").daemon.hostname == socket.gethostname()


def test_a_hostname_with_spaces_is_refused_with_its_line() -> None:
    """A host name that could not be a label or a Message-ID domain is a config error."""
    with pytest.raises(ConfigError, match=r"<config>:2: \[daemon\] hostname: 'web 1'"):
        config.loads('[daemon]\nhostname = "web 1"\n')


def test_scan_records_become_scan_alerts_that_count_no_events() -> None:
    """A scan signal is a WrapalertScan alert labelled with its source and host, listing its
    daemons, while the forwarder counts it as no event."""
    record = scan_record(ScanSignal("daemons", SCANNER, ("exim", "sshd", "vsftpd"), 1, 10, 70))
    (alert,) = build_alerts([record], host="web1", static={}, resolve_after=60, now=100)
    assert alert["labels"] == {
        "alertname": "WrapalertScan",
        "kind": "daemons",
        "client_addr": SCANNER,
        "host": "web1",
    }
    annotations = alert["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["summary"] == f"scan on web1: {SCANNER} tried 3 daemons (exim, sshd, vsftpd)"
    assert "events" not in annotations
    assert _events(record) == 0


def test_a_sweep_is_labelled_by_its_network() -> None:
    """A sweep has no single client address: its alert carries the network instead."""
    record = scan_record(ScanSignal("sweep", "198.51.100.0/24", ("sshd",), 16, 10, 70))
    (alert,) = build_alerts([record], host="web1", static={}, resolve_after=60, now=100)
    labels = alert["labels"]
    assert isinstance(labels, dict)
    assert labels["network"] == "198.51.100.0/24"
    assert "client_addr" not in labels


def posted_totals(fake: HttpServer) -> list[str]:
    """The events_total annotation of the single alert in each POST the fake received."""
    return [json.loads(r.body)[0]["annotations"]["events_total"] for r in fake.requests]


def refusal(at: float) -> dict[str, object]:
    return {"type": "event", "received": at, "daemon": "sshd", "client_addr": EVERYWHERE}


def test_events_total_counts_every_batch_of_a_firing_alert() -> None:
    """events_total adds up the batches of one alert, while events names the newest one."""
    with HttpServer() as fake:
        am = AlertmanagerSink(
            AlertmanagerSinkConfig(urls=(HttpUrl.parse(fake.url("")),)), host="web1"
        )
        asyncio.run(am.send_records([refusal(100.0), refusal(101.0)]))
        asyncio.run(am.send_records([refusal(160.0)]))
        assert posted_totals(fake) == ["2", "3"]
        assert json.loads(fake.requests[1].body)[0]["annotations"]["events"] == "1"


def test_a_retried_batch_is_counted_once() -> None:
    """A batch every peer refused is sent again; its events enter the total only once."""
    with HttpServer() as fake:
        fake.replies = [Reply(503)]
        am = AlertmanagerSink(
            AlertmanagerSinkConfig(urls=(HttpUrl.parse(fake.url("")),)), host="web1"
        )
        batch = [refusal(100.0), refusal(101.0)]
        with pytest.raises(TransientSinkError):
            asyncio.run(am.send_records(batch))
        asyncio.run(am.send_records(batch))
        assert posted_totals(fake) == ["2", "2"]


def test_the_total_starts_again_after_the_alert_resolved() -> None:
    """Events after resolve_after of quiet make a new alert, whose total starts at them."""
    with HttpServer() as fake:
        cfg = AlertmanagerSinkConfig(urls=(HttpUrl.parse(fake.url("")),), resolve_after=60.0)
        am = AlertmanagerSink(cfg, host="web1")
        asyncio.run(am.send_records([refusal(100.0)]))
        asyncio.run(am.send_records([refusal(161.0)]))
        assert posted_totals(fake) == ["1", "1"]


def test_digests_name_the_configured_hostname(sockdir: Path) -> None:
    """[daemon] hostname is the X-Wrapalert-Host of every digest mail."""
    path = write_config(sockdir)
    path.write_text(replace_once(path.read_text(), "[daemon]\n", '[daemon]\nhostname = "web-7"\n'))
    report_through_daemon(
        config.load(path),
        ["192.0.2.9"],
        then=lambda: wait_until(
            lambda: bool(maildir_messages(sockdir / "Maildir")), 15, "a digest"
        ),
    )
    (mail,) = maildir_messages(sockdir / "Maildir")
    assert mail["X-Wrapalert-Host"] == "web-7"


# -- daemon/fleet.py alone: posting and looking, against peers of the test's own -----------

SHARE_INTERVAL = 0.2  # seconds: the fleet part's interval in these tests (config: >= 1s)


def fleet_book(tmp_path: Path) -> Bans:
    """A ban book that follows the fleet, this host at 192.0.2.10; its kernel is never
    asked (its task does not run)."""
    store = Store(tmp_path / "state")
    store.open()
    (tmp_path / "sessions").mkdir(exist_ok=True)
    shield = Shield(lambda: ("192.0.2.10",), tmp_path / "sessions", tmp_path / "utmp")
    bans = Bans(store, SystemClock(), Stats(), shield=shield)
    bans.configure(NftablesSink(NftablesSinkConfig(follow=True)))
    return bans


def share(tmp_path: Path, *peers: HttpServer, follow: bool = True, **kw: Any) -> FleetSettings:
    """Settings for the fleet part: `peers`, basic auth, SHARE_INTERVAL."""
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    access = Access(tuple(HttpUrl.parse(p.url("")) for p in peers), 2.0, "web1", secret, None)
    values: dict[str, Any] = {
        "sink": "am",
        "access": access,
        "static": (("env", "prod"),),
        "rule": BanRule(follow=follow),
        "follow": follow,
        "interval": SHARE_INTERVAL,
        "hosts": None,
        "min_hosts": 1,
    }
    return FleetSettings(**(values | kw))


async def sharing(fleet: Fleet, done: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Run the fleet part until `done()` (polled), then stop it."""
    async with asyncio.TaskGroup() as tg:
        fleet.start(tg)
        await until(done, what, timeout)
        fleet.retire()


async def until(done: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait (polling, in the loop) until `done()`; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s"
        await asyncio.sleep(0.01)


def gets(peer: HttpServer) -> int:
    return sum(r.method == "GET" for r in peer.requests)


def posted(peer: HttpServer) -> list[list[dict[str, Any]]]:
    return [json.loads(r.body) for r in peer.requests if r.method == "POST"]


def ban_answer(*alerts: tuple[str, str, float]) -> Reply:
    """A peer's answer to the look: WrapalertBan alerts (host, address, seconds left)."""
    now = time.time()
    body = [
        {
            "labels": {"alertname": "WrapalertBan", "host": h, "client_addr": a, "reason": "scan"},
            "endsAt": rfc3339(now + left),
            "startsAt": rfc3339(now),
        }
        for h, a, left in alerts
    ]
    return Reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


def test_a_ban_of_this_hosts_is_posted_to_every_peer_with_credentials(tmp_path: Path) -> None:
    """A ban made here reaches both peers as a WrapalertBan alert with the sink's static
    labels, over basic auth; a whole post follows every few intervals (a peer that lost
    its alerts gets them back)."""
    bans = fleet_book(tmp_path)
    with HttpServer() as one, HttpServer() as two:
        fleet = Fleet(share(tmp_path, one, two, follow=False), bans=bans, host="web1",
                      clock=SystemClock(), stats=bans.stats)  # fmt: skip

        async def scenario() -> None:
            async with asyncio.TaskGroup() as tg:
                fleet.start(tg)
                await asyncio.sleep(0.05)
                bans.request("203.0.113.7", "3 refusals", time.time())
                await until(lambda: all(len(posted(p)) >= 2 for p in (one, two)), "two posts")
                fleet.retire()

        asyncio.run(scenario())
        for peer in (one, two):
            posts = posted(peer)
            assert posts[0] == posts[1]  # the change at once, then the whole (same) set
            (alert,) = posts[0]
            assert alert["labels"] == {
                "env": "prod",
                "alertname": "WrapalertBan",
                "client_addr": "203.0.113.7",
                "host": "web1",
                "reason": "threshold",
            }
            assert {r.headers["Authorization"] for r in peer.requests} == {"Basic d2ViMTpwdw=="}
        assert fleet.status()["ok"] is True


def test_a_peer_that_failed_gets_everything_at_its_next_try(tmp_path: Path) -> None:
    """A post one peer refused is not lost: an interval later that peer gets the whole set
    (before the next whole post to every peer), while the other took it at once."""
    bans = fleet_book(tmp_path)
    with HttpServer() as up, HttpServer() as down:
        down.replies = [Reply(503)]
        settings = share(tmp_path, up, down, follow=False, interval=0.5)
        fleet = Fleet(settings, bans=bans, host="web1", clock=SystemClock(), stats=bans.stats)
        bans.request("203.0.113.7", "3 refusals", time.time())
        asyncio.run(sharing(fleet, lambda: len(posted(down)) >= 2, "the second try"))
        assert [len(p) for p in posted(down)] == [1, 1]
        assert len(posted(up)) == 1
        assert fleet.status()["ok"] is True


def test_looks_follow_the_union_of_the_peers_answers(tmp_path: Path) -> None:
    """The look asks every peer for the active WrapalertBan alerts; a ban one peer holds is
    followed although the other (restarted, empty) holds none; this host's own alerts are
    not; the GET carries the filter and the credentials."""
    bans = fleet_book(tmp_path)
    with HttpServer() as one, HttpServer() as two:
        one.reply = ban_answer(("host-a", "203.0.113.7", 600), ("web1", "198.51.100.1", 600))
        two.reply = ban_answer()
        fleet = Fleet(share(tmp_path, one, two), bans=bans, host="web1", clock=SystemClock(),
                      stats=bans.stats)  # fmt: skip
        asyncio.run(sharing(fleet, lambda: bool(bans.policy.active), "a fleet ban"))
        assert set(bans.policy.active) == {"203.0.113.7"}
        assert bans.policy.active["203.0.113.7"].reason == "fleet: banned on host-a"
        look = next(r for r in one.requests if r.method == "GET")
        assert look.path == "/api/v2/alerts?active=true&filter=alertname%3D%22WrapalertBan%22"
        assert look.headers["Authorization"] == "Basic d2ViMTpwdw=="


def test_when_no_peer_answers_nothing_is_lifted(tmp_path: Path) -> None:
    """Both peers failing: the fleet bans held stay (to their own end), status says the
    fleet is cut off; when one answers again without the ban, it is lifted."""
    bans = fleet_book(tmp_path)
    with HttpServer() as one, HttpServer() as two:
        one.reply = two.reply = ban_answer(("host-a", "203.0.113.7", 600))
        fleet = Fleet(share(tmp_path, one, two), bans=bans, host="web1", clock=SystemClock(),
                      stats=bans.stats)  # fmt: skip
        held: list[set[str]] = []

        async def scenario() -> None:
            async with asyncio.TaskGroup() as tg:
                fleet.start(tg)
                await until(lambda: bool(bans.policy.active), "the fleet ban")
                one.reply = two.reply = Reply(500)
                asked = gets(one), gets(two)
                await until(lambda: (gets(one), gets(two)) >= (asked[0] + 2, asked[1] + 2), "looks")
                held.append(set(bans.policy.active))
                assert fleet.status()["ok"] is False
                two.reply = ban_answer()
                await until(lambda: not bans.policy.active, "the lift")
                fleet.retire()

        asyncio.run(scenario())
        assert held == [{"203.0.113.7"}]


def test_a_hostile_answer_costs_that_peer_only(tmp_path: Path) -> None:
    """An answer past MAX_REPLY is not read (that peer failed); malformed alerts in the
    other's are counted and skipped; its good alert is followed."""
    bans = fleet_book(tmp_path)
    with HttpServer() as big, HttpServer() as odd:
        big.reply = Reply(200, b"[" + b" " * MAX_REPLY + b"]")
        good = json.loads(ban_answer(("host-a", "203.0.113.7", 600)).body)
        odd.reply = Reply(200, json.dumps([*good, {"labels": {"host": 7}}, "x"]).encode())
        fleet = Fleet(share(tmp_path, big, odd), bans=bans, host="web1", clock=SystemClock(),
                      stats=bans.stats)  # fmt: skip

        def done() -> bool:
            return bool(bans.policy.active) and fleet.state[big.url("")].ok is False

        asyncio.run(sharing(fleet, done, "the look"))
        assert set(bans.policy.active) == {"203.0.113.7"}
        assert bans.stats.fleet_rejected["bad_labels"] % 2 == 0  # two at each look
        peers = fleet.status()["peers"]
        assert isinstance(peers, dict)
        assert "reply larger than" in peers[big.url("")]["last_error"]
