"""The heartbeat (daemon/heartbeat.py): an always-firing WrapalertHeartbeat per
alertmanager sink, refreshed every interval with its end three intervals ahead; against
peers of the test's own, and in a real Alertmanager behind basic auth, where it stops
once the daemon stops."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from amcluster import USER, Api, Peer, password_file, require_alertmanager, web_config
from helpers import HttpServer, Reply, Running, wait_until, write_config

from wrapalert import config
from wrapalert.clock import SystemClock
from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.daemon.heartbeat import Heartbeat
from wrapalert.daemon.server import Server
from wrapalert.sinks.alertmanager import AlertmanagerSinkConfig, heartbeat_alert


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_the_alert_fires_since_the_start_and_ends_three_intervals_ahead() -> None:
    """Labels alertname, host and the static ones (which cannot replace ours)."""
    alert = heartbeat_alert(
        host="web1", static={"env": "prod", "host": "x"}, started=1000.0, now=1900.0, interval=300
    )
    assert alert["labels"] == {"env": "prod", "alertname": "WrapalertHeartbeat", "host": "web1"}
    assert moment(str(alert["startsAt"])) == 1000.0
    assert moment(str(alert["endsAt"])) == 1900.0 + 900
    assert "resolves by itself 900s after the host goes silent" in str(alert["annotations"])


def test_a_beat_goes_to_every_peer_and_one_taking_it_is_enough() -> None:
    """One peer refusing: still sent (the switch watches the cluster); both refusing: the
    error is kept for status, and the next beat that gets through clears it."""
    with HttpServer() as one, HttpServer() as two:
        urls = (HttpUrl.parse(one.url("")), HttpUrl.parse(two.url("")))
        beat = Heartbeat(
            AlertmanagerSinkConfig(urls=urls, heartbeat=60.0), host="web1", clock=SystemClock()
        )
        two.replies = [Reply(503)]
        asyncio.run(beat.beat())
        assert beat.sent is not None
        assert beat.last_error is None
        one.replies = [Reply(500)]
        two.replies = [Reply(500)]
        asyncio.run(beat.beat())
        assert beat.last_error is not None
        assert "HTTP 500" in beat.last_error
        asyncio.run(beat.beat())
        assert beat.status()["last_error"] is None
        (alert,) = json.loads(one.requests[0].body)
        assert alert["labels"]["alertname"] == "WrapalertHeartbeat"
        assert len(one.requests) == len(two.requests) == 3


def test_heartbeat_is_on_by_default_and_zero_turns_it_off() -> None:
    """Five minutes unless set; "0" off; anything under a second is refused."""
    table = '[digest]\nenabled = false\n[[sink]]\ntype = "alertmanager"\n'
    (sink,) = config.loads(table).sinks
    assert isinstance(sink, AlertmanagerSinkConfig)
    assert sink.heartbeat == 300.0
    (off,) = config.loads(f'{table}heartbeat = "0"\n').sinks
    assert isinstance(off, AlertmanagerSinkConfig)
    assert off.heartbeat == 0.0
    with pytest.raises(ConfigError, match=r"heartbeat: use 0 \(off\) or at least 1s"):
        config.loads(f'{table}heartbeat = "500ms"\n')


@pytest.mark.system
def test_heartbeat_alerts_fire_in_a_real_alertmanager_and_stop_with_the_daemon(
    tmp_path: Path, sockdir: Path
) -> None:
    """A daemon with heartbeat = "1s" keeps its alert firing (endsAt pushed on at each
    beat); once the daemon stops, the alert resolves within three intervals."""
    require_alertmanager()
    peer = Peer(tmp_path / "am", web_config(tmp_path))
    api = Api(None)
    try:
        wait_until(lambda: api.ready(peer), 30, "alertmanager")
        path = write_config(
            sockdir,
            sinks=(
                f'[[sink]]\ntype = "alertmanager"\nurls = ["{peer.url}"]\nheartbeat = "1s"\n'
                f'username = "{USER}"\npassword_file = "{password_file(tmp_path)}"\n'
            ),
            digests=False,
        )
        path.write_text(path.read_text().replace("[daemon]\n", '[daemon]\nhostname = "beat-1"\n'))
        matchers = ('alertname="WrapalertHeartbeat"', 'host="beat-1"')

        def ends() -> list[float]:
            return [moment(a["endsAt"]) for a in api.alerts(peer, *matchers)]

        async def scenario() -> tuple[list[float], list[float]]:
            async with Running(Server(config.load(path))):
                await asyncio.to_thread(wait_until, lambda: bool(ends()), 10, "the heartbeat")
                first = ends()
                await asyncio.sleep(1.5)
                return first, ends()

        first, later = asyncio.run(scenario())
        stopped = time.time()
        assert len(first) == 1
        assert first[0] - stopped <= 3.5
        assert later[0] > first[0]  # refreshed
        wait_until(lambda: not ends(), 10, "the heartbeat to resolve")
        assert time.time() - stopped <= 3 * 1.0 + 2  # three intervals, and a look's latency
    finally:
        peer.stop()
