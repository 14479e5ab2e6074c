"""alertmanager sink against a real prometheus-alertmanager on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    NO_DIGESTS,
    HttpServer,
    Reply,
    free_port,
    http_get,
    report_through_daemon,
    require,
    wait_until,
    write_config,
)

from wrapalert import config
from wrapalert.confparse import HttpUrl
from wrapalert.sinks.alertmanager import (
    MAX_VALUE,
    AlertmanagerSink,
    AlertmanagerSinkConfig,
    build_alerts,
)
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError

BINARY = "prometheus-alertmanager"
# Every alert goes to a receiver that notifies nobody: the test reads the API instead.
ROUTES = "route:\n  receiver: quiet\nreceivers:\n  - name: quiet\n"
# A label name every Alertmanager refuses: 0.25 took only [a-zA-Z_][a-zA-Z0-9_]*, 0.28
# takes any UTF-8 ("bad-name" too), none an empty one. Our own names are checked below.
REFUSED_LABEL = ""


class Alertmanager:
    """A real Alertmanager (PLATFORM.md's recipe: loopback, no gossip), read through its API."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (base / "alertmanager.yml").write_text(ROUTES)
        self.log = base / "alertmanager.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    BINARY,
                    f"--config.file={base / 'alertmanager.yml'}",
                    f"--storage.path={base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        # Another process: its readiness is only observable by asking it.
        try:
            wait_until(self.ready, timeout=30, what="alertmanager /-/ready")
        except BaseException:
            self.stop()  # never leave one running behind a failed start
            raise

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            http_get(f"{self.url}/-/ready", timeout=1)
        except OSError:
            return False
        return True

    def alerts(self, host: str) -> list[dict[str, Any]]:
        """The alerts this Alertmanager holds for reporting `host`, sorted by their labels."""
        query = urllib.parse.urlencode({"filter": f'host="{host}"'})
        alerts: list[dict[str, Any]] = json.loads(http_get(f"{self.url}/api/v2/alerts?{query}"))
        return sorted(alerts, key=lambda a: sorted(a["labels"].items()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    require(
        shutil.which(BINARY) is not None,
        f"{BINARY} is not installed (apt-get install prometheus-alertmanager)",
    )
    server = Alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield server
    server.stop()


@pytest.fixture
def host(request: pytest.FixtureRequest) -> str:
    """A reporting host name of this test's own, so tests sharing one Alertmanager never
    see each other's alerts."""
    name: str = request.node.name
    return name.replace("[", "-").rstrip("]")


def sink(*urls: str, host: str, **kw: Any) -> AlertmanagerSink:
    cfg = AlertmanagerSinkConfig(urls=tuple(HttpUrl.parse(url) for url in urls), **kw)
    return AlertmanagerSink(cfg, host=host)


def event(addr: str = "192.0.2.1", at: float | None = None, **fields: Any) -> dict[str, object]:
    record: dict[str, object] = {
        "type": "event",
        "received": time.time() if at is None else at,
        "daemon": "sshd",
        "client_addr": addr,
        "verdict": "deny",
        "trusted": True,
        "uid": 0,
    }
    return record | fields


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.system
def test_events_collapse_into_one_alert_per_label_set(
    alertmanager: Alertmanager, host: str
) -> None:
    """Three events from one client and one from another make two alerts, each counting its
    own events, labelled by daemon, client, reporting host and trust."""
    t = time.time()
    records = [event(at=t), event(at=t + 1), event("192.0.2.2", at=t + 1.5), event(at=t + 2)]
    asyncio.run(sink(alertmanager.url, host=host).send_records(records))
    first, second = alertmanager.alerts(host)
    assert first["labels"] == {
        "alertname": "WrapalertRefused",
        "daemon": "sshd",
        "client_addr": "192.0.2.1",
        "host": host,
        "trust": "trusted",
    }
    assert first["annotations"]["events"] == "3"
    assert (
        first["annotations"]["summary"] == f"3 refused connections to sshd from 192.0.2.1 on {host}"
    )
    assert second["labels"]["client_addr"] == "192.0.2.2"
    assert second["annotations"]["events"] == "1"


@pytest.mark.system
def test_starts_at_the_first_event_and_ends_resolve_after_the_last(
    alertmanager: Alertmanager, host: str
) -> None:
    """startsAt is the first event, endsAt the last plus resolve_after, both RFC 3339 UTC,
    and the annotations name the same span."""
    t = time.time()
    records = [event(at=t), event(at=t + 30)]
    asyncio.run(sink(alertmanager.url, host=host, resolve_after=600).send_records(records))
    (alert,) = alertmanager.alerts(host)
    assert alert["startsAt"].endswith("Z")
    assert moment(alert["startsAt"]) == pytest.approx(t, abs=0.002)
    assert moment(alert["endsAt"]) == pytest.approx(t + 30 + 600, abs=0.002)
    assert moment(alert["annotations"]["first_seen"]) == pytest.approx(t, abs=0.002)
    assert moment(alert["annotations"]["last_seen"]) == pytest.approx(t + 30, abs=0.002)
    assert alert["status"]["state"] == "active"


@pytest.mark.system
def test_a_later_batch_keeps_the_alert_firing_from_its_start(
    alertmanager: Alertmanager, host: str
) -> None:
    """Re-sent before it ends, the alert keeps its first startsAt, moves endsAt on and shows
    the newest batch's count."""
    t = time.time()
    am = sink(alertmanager.url, host=host, resolve_after=600)
    asyncio.run(am.send_records([event(at=t), event(at=t + 1)]))
    asyncio.run(am.send_records([event(at=t + 60)]))
    (alert,) = alertmanager.alerts(host)
    assert moment(alert["startsAt"]) == pytest.approx(t, abs=0.002)
    assert moment(alert["endsAt"]) == pytest.approx(t + 60 + 600, abs=0.002)
    assert alert["annotations"]["events"] == "1"


@pytest.mark.system
def test_untrusted_reports_are_a_separate_alert_that_says_so(
    alertmanager: Alertmanager, host: str
) -> None:
    """The same client reported by an untrusted uid is its own alert, trust="untrusted",
    whose summary names the uid."""
    records = [event(), event(trusted=False, uid=1000)]
    asyncio.run(sink(alertmanager.url, host=host).send_records(records))
    trusted, untrusted = alertmanager.alerts(host)
    assert (trusted["labels"]["trust"], untrusted["labels"]["trust"]) == ("trusted", "untrusted")
    assert untrusted["annotations"]["summary"].startswith("UNTRUSTED report (uid 1000): ")


@pytest.mark.system
def test_client_names_and_users_are_annotations(alertmanager: Alertmanager, host: str) -> None:
    """What varies within an alert (client names, users) is listed, most frequent first."""
    records = [
        event(client_name="b.example", user="root"),
        event(client_name="a.example"),
        event(client_name="b.example"),
    ]
    asyncio.run(sink(alertmanager.url, host=host).send_records(records))
    (alert,) = alertmanager.alerts(host)
    assert alert["annotations"]["client_name"] == "b.example, a.example"
    assert alert["annotations"]["user"] == "root"
    assert "(b.example, a.example)" in alert["annotations"]["summary"]


@pytest.mark.system
def test_static_labels_join_every_alert(alertmanager: Alertmanager, host: str) -> None:
    """The configured labels are added to each alert, next to wrapalert's own."""
    am = sink(alertmanager.url, host=host, labels=(("env", "prod"), ("team", "sec")))
    asyncio.run(am.send_records([event()]))
    (alert,) = alertmanager.alerts(host)
    assert alert["labels"]["env"] == "prod"
    assert alert["labels"]["team"] == "sec"
    assert alert["labels"]["alertname"] == "WrapalertRefused"


@pytest.mark.system
def test_held_records_become_one_held_alert(alertmanager: Alertmanager, host: str) -> None:
    """Events the rate limit held back arrive as one WrapalertHeld alert with their count,
    span and top daemons: counted, never lost."""
    t = time.time()
    held: list[dict[str, object]] = [
        {"type": "held", "events": 90, "first": t, "last": t + 5, "daemons": {"sshd": 90}},
        {"type": "held", "events": 10, "first": t + 6, "last": t + 7, "daemons": {"ftpd": 10}},
    ]
    asyncio.run(sink(alertmanager.url, host=host).send_records(held))
    (alert,) = alertmanager.alerts(host)
    assert alert["labels"] == {"alertname": "WrapalertHeld", "host": host}
    assert alert["annotations"]["events"] == "100"
    assert alert["annotations"]["daemons"] == "sshd: 90, ftpd: 10"
    assert moment(alert["startsAt"]) == pytest.approx(t, abs=0.002)


@pytest.mark.system
def test_held_alert_names_the_story_of_its_records(alertmanager: Alertmanager, host: str) -> None:
    """A held record that names its story (a brute force) puts it in the WrapalertHeld
    alert's summary and in a `story` annotation."""
    t = time.time()
    story = "brute force from 203.0.113.5 on sshd (90 tries)"
    held: list[dict[str, object]] = [
        {"type": "held", "events": 90, "first": t, "last": t + 5, "daemons": {"sshd": 90},
         "clients": {"203.0.113.5": 90}, "story": story},
    ]  # fmt: skip
    asyncio.run(sink(alertmanager.url, host=host).send_records(held))
    (alert,) = alertmanager.alerts(host)
    assert alert["annotations"]["story"] == story
    assert f"on {host} ({story}): counted" in alert["annotations"]["summary"]


HOSTILE = [
    'sshd", "alertname": "Forged',
    'sshd"} , {"labels": {"x": "y"}}] ',
    "sshd\nalertname=Forged\r\n",
    'sshd{alertname="Forged"}',
    "sshd \u2603 \u00e9 \U0001f600 \u202e",
    "s" * 3000,
]


@pytest.mark.system
@pytest.mark.parametrize(
    "value", HOSTILE, ids=["quote", "json", "newline", "promql", "uni", "long"]
)
def test_hostile_values_arrive_as_data_never_as_labels(
    alertmanager: Alertmanager, host: str, value: str
) -> None:
    """Quotes, JSON, newlines, label syntax, unicode and very long values in every field
    arrive intact as label and annotation values, and never add or rename a label."""
    record = event(value, daemon=value, client_name=value, user=value)
    asyncio.run(sink(alertmanager.url, host=host).send_records([record]))
    (alert,) = alertmanager.alerts(host)
    assert set(alert["labels"]) == {"alertname", "daemon", "client_addr", "host", "trust"}
    assert alert["labels"]["alertname"] == "WrapalertRefused"
    assert alert["labels"]["daemon"] == value
    assert alert["labels"]["client_addr"] == value
    assert alert["annotations"]["client_name"] == value
    assert alert["annotations"]["user"] == value


@pytest.mark.system
def test_a_lone_surrogate_becomes_a_replacement_character(
    alertmanager: Alertmanager, host: str
) -> None:
    """A value that is not valid UTF-8 is repaired (U+FFFD), not refused and not dropped."""
    asyncio.run(sink(alertmanager.url, host=host).send_records([event(daemon="ssh\udcffd")]))
    (alert,) = alertmanager.alerts(host)
    assert alert["labels"]["daemon"] == "ssh\ufffdd"


@pytest.mark.system
def test_a_refusal_from_alertmanager_is_permanent_with_its_words(
    alertmanager: Alertmanager, host: str
) -> None:
    """A label set Alertmanager refuses (a static label the config check would have stopped)
    gives a permanent error quoting Alertmanager's reason."""
    am = sink(alertmanager.url, host=host, labels=((REFUSED_LABEL, "x"),))
    with pytest.raises(PermanentSinkError, match=r"HTTP 400 .*invalid label set"):
        asyncio.run(am.send_records([event()]))
    assert alertmanager.alerts(host) == []


def test_every_label_name_we_send_is_a_classic_one() -> None:
    """Every label name the sink sets, for every kind of record, and every static one the
    config accepts, is a classic Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*, not "__..."):
    Alertmanagers before 0.28 refuse anything else, and 0.28 no longer does, so this
    check is ours to make."""
    records: list[dict[str, object]] = [
        event(),
        event(trusted=False),
        event(verdict="allow"),
        {"type": "scan", "kind": "daemons", "target": "192.0.2.9", "daemons": ["sshd"]},
        {"type": "scan", "kind": "sweep", "target": "198.51.100.0/24", "sources": 16},
        {"type": "held", "events": 3, "daemons": {"sshd": 3}},
        {"type": "held", "events": 2, "trusted": False, "untrusted_daemons": {"x": 2}},
    ]
    cfg = config.loads(
        '[[sink]]\ntype = "alertmanager"\nurls = ["http://127.0.0.1:9093"]\n'
        'labels = { env = "prod", _team = "ops" }\n' + NO_DIGESTS
    ).sinks[0]
    assert isinstance(cfg, AlertmanagerSinkConfig)
    alerts = build_alerts(records, host="web1", static=dict(cfg.labels), resolve_after=60, now=0)
    names = {name for alert in alerts for name in alert["labels"]}  # type: ignore[attr-defined]
    assert len(alerts) == len(records)
    assert {"alertname", "host", "env", "_team", "kind", "network"} <= names
    for name in names:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name), name
        assert not name.startswith("__"), name


def test_a_422_is_permanent() -> None:
    """Alertmanager's 422 (a body its schema rejects), here from a real HTTP server playing
    it, is permanent, with the server's message."""
    with HttpServer() as fake:
        fake.reply = Reply(422, b'{"code":602,"message":"0.labels in body is required"}')
        am = sink(f"http://127.0.0.1:{fake.port}", host="web1")
        with pytest.raises(PermanentSinkError, match=r"HTTP 422 .*labels in body is required"):
            asyncio.run(am.send_records([event()]))
        assert fake.requests[0].path == "/api/v2/alerts"


def test_an_unreachable_alertmanager_is_transient_at_once() -> None:
    """Nobody listening: transient, well before the timeout."""
    start = time.monotonic()
    with pytest.raises(TransientSinkError, match="Connection refused"):
        asyncio.run(sink(f"http://127.0.0.1:{free_port()}", host="web1").send_records([event()]))
    assert time.monotonic() - start < 2


@pytest.mark.system
def test_one_of_two_alertmanagers_down_still_delivers(
    alertmanager: Alertmanager, host: str
) -> None:
    """Each URL gets every POST; one accepting is a delivery."""
    down = f"http://127.0.0.1:{free_port()}"
    asyncio.run(sink(down, alertmanager.url, host=host).send_records([event()]))
    assert len(alertmanager.alerts(host)) == 1


@pytest.mark.system
def test_one_refusing_and_one_down_is_transient(alertmanager: Alertmanager, host: str) -> None:
    """Permanent only when every Alertmanager refused for good: one that is down may come
    back and take the alerts, so the batch is retried."""
    down = f"http://127.0.0.1:{free_port()}"
    am = sink(down, alertmanager.url, host=host, labels=((REFUSED_LABEL, "x"),))
    with pytest.raises(TransientSinkError, match=r"Connection refused; .*HTTP 400"):
        asyncio.run(am.send_records([event()]))


def test_a_url_prefix_is_kept() -> None:
    """An Alertmanager under a route prefix (--web.route-prefix) gets PREFIX/api/v2/alerts."""
    with HttpServer() as fake:
        asyncio.run(sink(f"{fake.url('/am/')}", host="web1").send_records([event()]))
        assert fake.requests[0].path == "/am/api/v2/alerts"


def test_allowed_connections_have_their_own_alertname() -> None:
    """An event from hosts.allow (verdict allow) is never reported as a refusal."""
    (alert,) = build_alerts(
        [event(verdict="allow")], host="web1", static={}, resolve_after=60, now=0
    )
    assert alert["labels"]["alertname"] == "WrapalertAllowed"  # type: ignore[index]


def test_records_of_an_unknown_type_make_no_alert_and_no_post() -> None:
    """A record type this sink does not know is skipped; nothing left, nothing posted."""
    with HttpServer() as fake:
        asyncio.run(sink(fake.url(""), host="web1").send_records([{"type": "future"}]))
        assert fake.requests == []


def hook_record(ok: bool, since: float) -> dict[str, object]:  # noqa: FBT001 - the record's
    """The alarm book's "hook" record (daemon/alarm.py), as the post offers it."""
    problems = [] if ok else ["/etc/hosts.deny: no rule of /etc/hosts.deny runs wrapalert's hook"]
    return {"type": "hook", "ok": ok, "problems": problems, "more": 0, "since": since}


@pytest.mark.system
def test_a_broken_hook_fires_wrapalert_hook_broken_until_it_is_fixed(
    alertmanager: Alertmanager, host: str
) -> None:
    """A "hook" record with problems fires WrapalertHookBroken (labelled host, the problem
    in its summary, lasting three refreshes); the record that says it is fixed resolves it."""
    t = time.time()
    am = sink(alertmanager.url, host=host, resolve_after=30)
    asyncio.run(am.send_records([hook_record(ok=False, since=t - 5) | {"refresh": 60.0}]))
    (alert,) = alertmanager.alerts(host)
    assert alert["labels"] == {"alertname": "WrapalertHookBroken", "host": host}
    assert alert["status"]["state"] == "active"
    assert "no rule of /etc/hosts.deny runs wrapalert's hook" in alert["annotations"]["summary"]
    assert moment(alert["startsAt"]) == pytest.approx(t - 5, abs=0.002)
    assert moment(alert["endsAt"]) >= t + 3 * 60 - 1  # posted every minute while broken
    asyncio.run(am.send_records([hook_record(ok=True, since=t - 5)]))
    wait_until(
        lambda: all(a["status"]["state"] != "active" for a in alertmanager.alerts(host)),
        timeout=10,
        what="WrapalertHookBroken resolved",
    )


def test_a_hook_record_is_an_alert_of_its_own_beside_the_events() -> None:
    """Within one batch: the events' alert and WrapalertHookBroken, neither counting the
    other."""
    alerts = build_alerts(
        [event(), hook_record(ok=False, since=0.0)], host="web1", static={}, resolve_after=60, now=0
    )
    assert [a["labels"]["alertname"] for a in alerts] == [  # type: ignore[index]
        "WrapalertRefused",
        "WrapalertHookBroken",
    ]


@pytest.mark.system
def test_daemon_raises_alerts_for_the_events_a_client_sends(
    sockdir: Path, alertmanager: Alertmanager
) -> None:
    """End to end: with an alertmanager sink, refused connections reported by the client
    become alerts in a real Alertmanager, labelled with this host's name."""
    path = write_config(
        sockdir,
        sinks=f"""
[[sink]]
type = "maildir"
path = "{sockdir}/Maildir"

[[sink]]
type = "alertmanager"
urls = ["{alertmanager.url}"]
labels = {{ test = "{sockdir.name}" }}
""",
    )
    server = report_through_daemon(config.load(path), ["192.0.2.7"] * 3)
    ours = [a for a in alertmanager.alerts(server.host) if a["labels"].get("test") == sockdir.name]
    # The heartbeat (on by default) is the other alert of this host's.
    alerts = [a for a in ours if a["labels"]["alertname"] == "WrapalertRefused"]
    assert [a["labels"]["client_addr"] for a in alerts] == ["192.0.2.7"]
    assert sum(int(a["annotations"]["events"]) for a in alerts) >= 1


@pytest.mark.system
def test_a_full_batch_of_distinct_sources_is_accepted_in_one_post(
    alertmanager: Alertmanager, host: str
) -> None:
    """A forwarder's largest batch (500 records, all different clients) is one POST of 500
    alerts, and Alertmanager takes them all."""
    records = [event(f"198.51.{i // 250}.{i % 250}") for i in range(500)]
    asyncio.run(sink(alertmanager.url, host=host).send_records(records))
    assert len(alertmanager.alerts(host)) == 500


def test_a_value_longer_than_any_datagram_is_capped() -> None:
    """Values past MAX_VALUE characters (more than a datagram holds) are cut, marked with an
    ellipsis, so one record cannot make an alert of unbounded size."""
    (alert,) = build_alerts(
        [event(daemon="d" * (MAX_VALUE * 3))], host="web1", static={}, resolve_after=60, now=0
    )
    daemon = alert["labels"]["daemon"]  # type: ignore[index]
    assert len(daemon) == MAX_VALUE
    assert daemon.endswith("d…")
