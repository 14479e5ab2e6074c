"""Prometheus metrics: the textfile the running daemon writes, checked by `promtool check
metrics`, and the shipped alert rules, checked and unit-tested by promtool."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import Records, Running, make_config, require, send_refusals
from timing import EPOCH, VirtualClock, run

from wrapalert import config
from wrapalert.config import MetricsConfig
from wrapalert.confparse import ConfigError
from wrapalert.daemon import metrics
from wrapalert.daemon.server import Server
from wrapalert.sinks.base import RECORDS, Built

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "packaging" / "examples" / "wrapalert.rules.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not found (apt-get install prometheus)")
    assert path is not None
    return path


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


def samples(text: str) -> dict[str, float]:
    """Sample lines as {"name{labels}": value}."""
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in lines}


@pytest.mark.system
def test_the_running_daemon_writes_metrics_promtool_accepts(sockdir: Path) -> None:
    """With [metrics] textfile set, the daemon writes the file every interval on its clock;
    promtool finds nothing to criticise and the counters follow the events."""
    prom = sockdir / "wrapalert.prom"
    cfg = make_config(sockdir)
    cfg = replace(cfg, metrics=MetricsConfig(textfile=prom, interval=15.0))
    clock = VirtualClock()

    async def scenario() -> tuple[str, str]:
        server = Server(cfg, sinks=[Built(Records("am"), RECORDS)], clock=clock)
        async with Running(server):
            await asyncio.sleep(1)
            first = prom.read_text()
            send_refusals(cfg.daemon.socket, count=3)
            await asyncio.sleep(15)
            return first, prom.read_text()

    first, later = run(scenario())
    assert samples(first)["wrapalert_events_received_total"] == 0
    got = samples(later)
    assert got["wrapalert_events_received_total"] == 3
    assert got['wrapalert_sink_events_delivered_total{sink="am"}'] == 3
    assert got['wrapalert_sink_failing{sink="am"}'] == 0
    assert got["wrapalert_metrics_written_timestamp_seconds"] == pytest.approx(EPOCH + 16)
    assert got["wrapalert_state_ok"] == 1
    assert 15.0 in clock.sleeps
    done = check_metrics(later)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.system
def test_hostile_sink_names_and_reasons_stay_one_valid_sample_each() -> None:
    """Quotes, backslashes and newlines in label values are escaped: promtool accepts the
    file and each value is still one sample."""
    status: dict[str, object] = {
        "rejected": {'bad"tag\\\n': 2},
        "sinks": {'we"b\\hook\n': {"delivered": 1, "last_error": "x"}},
        "state": {"ok": False},
    }
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    done = check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'wrapalert_events_rejected_total{reason="bad\\"tag\\\\\\n"} 2\n' in text
    assert 'wrapalert_sink_failing{sink="we\\"b\\\\hook\\n"} 1\n' in text
    assert "wrapalert_state_ok 0\n" in text


@pytest.mark.system
def test_bans_are_exported_only_where_an_nftables_sink_runs() -> None:
    """The ban counters and the active gauge follow status's `bans` object; without an
    nftables sink (no mode) there is no ban metric at all."""
    bans = {"active": 3, "added": 7, "expired": 4, "lifted": 0, "would_ban": 0}
    status: dict[str, object] = {"bans": {**bans, "refused": {"cap": 2}, "mode": "enforce"}}
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    done = check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    got = samples(text)
    assert got["wrapalert_bans_active"] == 3
    assert got["wrapalert_bans_added_total"] == 7
    assert got['wrapalert_bans_refused_total{reason="cap"}'] == 2
    off = metrics.render({"bans": {**bans, "mode": None}}, now=2.0, started=1.0, build="1.0")
    assert "wrapalert_bans" not in off


@pytest.mark.system
def test_evidence_and_duplicates_are_exported() -> None:
    """What the kernel said of each event's source, by outcome, whether it can answer, and
    the hook's dropped second copies: promtool accepts them."""
    status: dict[str, object] = {
        "duplicates": 4,
        "evidence": {"error": "sock_diag: errno 22", "tcp": 7, "udp": 2, "no_ports": 1},
    }
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    done = check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    got = samples(text)
    assert got["wrapalert_events_duplicate_total"] == 4
    assert got['wrapalert_evidence_total{outcome="tcp"}'] == 7
    assert got['wrapalert_evidence_total{outcome="no_ports"}'] == 1
    assert got["wrapalert_evidence_ok"] == 0
    assert 'outcome="error"' not in text


@pytest.mark.system
def test_bans_not_in_the_kernel_and_repairs_are_exported() -> None:
    """Bans the kernel does not enforce, a refusing kernel and what the reconcile repaired
    are metrics (promtool accepts them); in dry-run (no kernel object) only the error."""
    kernel = {"in_sync": False, "missing": 2, "repairs": {"table": 1, "missing": 5}}
    bans = {"active": 2, "added": 2, "refused": {}, "mode": "enforce"}
    status: dict[str, object] = {"bans": {**bans, "last_error": "nft: no", "kernel": kernel}}
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    done = check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    got = samples(text)
    assert got["wrapalert_bans_unenforced"] == 2
    assert got["wrapalert_bans_kernel_error"] == 1
    assert got['wrapalert_bans_kernel_repairs_total{reason="table"}'] == 1
    assert got['wrapalert_bans_kernel_repairs_total{reason="missing"}'] == 5
    dry = metrics.render({"bans": {**bans, "mode": "dry-run"}}, now=2.0, started=1.0, build="1")
    assert "wrapalert_bans_kernel_error 0" in dry
    assert "wrapalert_bans_unenforced" not in dry


def test_the_hook_and_the_canary_are_exported() -> None:
    """wrapalert_hook_ok is 0 while a problem stops refusals arriving, 1 otherwise; the
    canary's last success is a timestamp (0: never); canary events and notices counted."""
    broken = {
        "ok": False,
        "problems": [{"key": "no_hook:/etc/hosts.deny"}],
        "canary": {"last_success": 1_700_000_123.5},
        "quiet": [{"daemon": "sshd", "last_seen": 1.0}],
    }
    status = {"hook": broken, "canary_events": 3, "notices": {"alarm-off": 2}}
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    assert "\nwrapalert_hook_ok 0\n" in text
    assert "\nwrapalert_hook_problems 1\n" in text
    assert "\nwrapalert_canary_last_success_timestamp_seconds 1700000123.5\n" in text
    assert "\nwrapalert_canary_events_total 3\n" in text
    assert "\nwrapalert_quiet_daemons 1\n" in text
    assert 'wrapalert_notices_total{kind="alarm-off"} 2\n' in text
    fine = {"hook": {"ok": True, "problems": [], "canary": {"last_success": None}}}
    text = metrics.render(fine, now=2.0, started=1.0, build="1.0")
    assert "\nwrapalert_hook_ok 1\n" in text
    assert "\nwrapalert_canary_last_success_timestamp_seconds 0\n" in text


@pytest.mark.system
def test_fleet_bans_peers_and_heartbeats_are_exported() -> None:
    """Bans followed from the fleet apart from this host's own, each peer's state, the
    peers' malformed alerts and each heartbeat's last send: promtool accepts them; a
    daemon without a fleet or a heartbeat exports none of them."""
    book = {"active": 2, "added": 5, "ended": 3, "refused": {"allowlisted": 1}}
    bans = {"active": 4, "added": 2, "refused": {}, "mode": "enforce", "fleet": book}
    fleet = {
        "peers": {"https://am1:9093": {"ok": True}, 'http://am"2': {"ok": False}},
        "rejected": {"bad_host": 2},
        "looked": 1.5,
    }
    beats = {"am": {"sent": 1.25, "interval": 300.0}, "am2": {"sent": None}}
    status: dict[str, object] = {"bans": bans, "fleet": fleet, "heartbeat": beats}
    text = metrics.render(status, now=2.0, started=1.0, build="1.0")
    done = check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    got = samples(text)
    assert got["wrapalert_bans_active"] == 4
    assert got["wrapalert_bans_fleet_active"] == 2
    assert got["wrapalert_bans_fleet_added_total"] == 5
    assert got["wrapalert_bans_fleet_ended_total"] == 3
    assert got['wrapalert_bans_fleet_refused_total{reason="allowlisted"}'] == 1
    assert got['wrapalert_fleet_peer_up{peer="https://am1:9093"}'] == 1
    assert got['wrapalert_fleet_peer_up{peer="http://am\\"2"}'] == 0
    assert got['wrapalert_fleet_alerts_rejected_total{reason="bad_host"}'] == 2
    assert got["wrapalert_fleet_last_look_timestamp_seconds"] == 1.5
    assert got['wrapalert_heartbeat_sent_timestamp_seconds{sink="am"}'] == 1.25
    assert 'sink="am2"' not in text
    plain = metrics.render({"bans": {**bans, "fleet": None}}, now=2.0, started=1.0, build="1")
    assert "fleet" not in plain
    assert "heartbeat" not in plain


def test_the_file_is_replaced_atomically_and_readable_by_node_exporter(tmp_path: Path) -> None:
    """Each write is a new file renamed over the old (never rewritten in place), mode 0644,
    with no temporary file left beside it."""
    prom = tmp_path / "wrapalert.prom"
    metrics.write(prom, "a 1\n")
    inode = prom.stat().st_ino
    metrics.write(prom, "a 2\n")
    assert prom.read_text() == "a 2\n"
    assert prom.stat().st_ino != inode
    assert prom.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["wrapalert.prom"]


def test_the_file_is_0644_under_the_units_umask(tmp_path: Path) -> None:
    """Under the service's UMask=0077 the file is still 0644: node_exporter can read it."""
    prom = tmp_path / "wrapalert.prom"
    old = os.umask(0o077)
    try:
        metrics.write(prom, "a 1\n")
    finally:
        os.umask(old)
    assert prom.stat().st_mode & 0o777 == 0o644


@dataclass
class InForce:
    """The config in force, as the reloader holds it."""

    cfg: config.Config


def test_a_moved_textfile_removes_the_old_one(tmp_path: Path) -> None:
    """When a reload points [metrics] textfile elsewhere, the old file goes: a file nobody
    updates would look like a dead daemon."""
    old, new = tmp_path / "old.prom", tmp_path / "new.prom"
    in_force = InForce(replace(config.Config(), metrics=MetricsConfig(old, 15.0)))

    async def scenario() -> None:
        task = asyncio.create_task(metrics.run(in_force, dict, VirtualClock()))
        await asyncio.sleep(1)
        assert old.exists()
        in_force.cfg = replace(in_force.cfg, metrics=MetricsConfig(new, 15.0))
        await asyncio.sleep(15)
        task.cancel()

    run(scenario())
    assert not old.exists()
    assert new.exists()


def test_a_textfile_node_exporter_would_not_read_is_refused() -> None:
    """node_exporter reads only *.prom files: another name is a config error."""
    with pytest.raises(ConfigError, match=r"textfile: .*must end in \.prom"):
        config.loads('[metrics]\ntextfile = "/var/lib/wrapalert.txt"\n')


@pytest.mark.system
def test_example_rules_pass_promtool() -> None:
    """The shipped alert rules pass `promtool check rules`."""
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


RULE_TESTS = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Written every minute for 10 minutes, then never again: the daemon stopped.
      - series: wrapalert_metrics_written_timestamp_seconds{{instance="web1"}}
        values: 0+60x10 600x20
      - series: wrapalert_outbox_digests{{instance="web1"}}
        values: 1x90
      - series: wrapalert_sink_failing{{instance="web1",sink="mail"}}
        values: 0x5 1x30
      - series: wrapalert_evidence_ok{{instance="web1"}}
        values: 1x5 0x30
      # Two bans not in the kernel at minutes 10 and 11, repaired; then from 31 on.
      - series: wrapalert_bans_unenforced{{instance="web1"}}
        values: 0x9 2x1 0x18 2x30
      - series: wrapalert_bans_kernel_error{{instance="web1"}}
        values: 0x60
      # Both fleet peers answer for 5 minutes, then neither does.
      - series: wrapalert_fleet_peer_up{{instance="web1",peer="am1"}}
        values: 1x5 0x40
      - series: wrapalert_fleet_peer_up{{instance="web1",peer="am2"}}
        values: 1x5 0x40
      # host web2 writes its metrics every minute, but its heartbeat was last sent at 0.
      - series: wrapalert_metrics_written_timestamp_seconds{{instance="web2"}}
        values: 0+60x60
      - series: wrapalert_heartbeat_sent_timestamp_seconds{{instance="web2",sink="am"}}
        values: 0x60
    alert_rule_test:
      - eval_time: 14m
        alertname: WrapalertFleetCutOff
        exp_alerts: []
      - eval_time: 16m
        alertname: WrapalertFleetCutOff
        exp_alerts:
          - exp_labels: {{severity: warning, instance: web1}}
            exp_annotations:
              summary: "wrapalert on web1 reaches no Alertmanager peer of its fleet"
              description: >-
                wrapalert status names each peer's error (credentials, CA, address; the unit
                needs IPAddressAllow= for a remote Alertmanager).
      - eval_time: 19m
        alertname: WrapalertHeartbeatNotSent
        exp_alerts: []
      - eval_time: 21m
        alertname: WrapalertHeartbeatNotSent
        exp_alerts:
          - exp_labels: {{severity: warning, instance: web2, sink: am}}
            exp_annotations:
              summary: >-
                wrapalert on web2 runs, but its heartbeat does not reach Alertmanager (sink am)
              description: >-
                wrapalert status shows the heartbeat's error; the dead man's switch behind
                Alertmanager will page for this host.
      - eval_time: 12m
        alertname: WrapalertBansNotEnforced
        exp_alerts: []
      - eval_time: 33m
        alertname: WrapalertBansNotEnforced
        exp_alerts:
          - exp_labels: {{severity: critical, instance: web1}}
            exp_annotations:
              summary: "wrapalert on web1 does not enforce its bans in the kernel"
              description: >-
                wrapalert status says why (NOT IN THE KERNEL, last kernel error); without
                the nftables drop-in the service may not change the firewall.
      - eval_time: 5m
        alertname: WrapalertDaemonDown
        exp_alerts: []
      - eval_time: 15m
        alertname: WrapalertDaemonDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: web1}}
            exp_annotations:
              summary: "wrapalert on web1 has not written its metrics for 5m 0s"
              description: >-
                The daemon is not running (or cannot write its metrics file): refused
                connections are spooled, not reported. Check: systemctl status wrapalert.service
      - eval_time: 59m
        alertname: WrapalertDigestsHeld
        exp_alerts: []
      - eval_time: 61m
        alertname: WrapalertDigestsHeld
        exp_alerts:
          - exp_labels: {{severity: warning, instance: web1}}
            exp_annotations:
              summary: "1 wrapalert digests on web1 undelivered for over an hour"
              description: >-
                See wrapalert status: a sink is failing or mails_per_hour is holding
                digests back.
      - eval_time: 25m
        alertname: WrapalertSinkFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: web1, sink: mail}}
            exp_annotations:
              summary: "wrapalert sink mail on web1 keeps failing"
              description: >-
                Deliveries are retried with backoff; nothing is lost yet.
                See: journalctl -u wrapalert.service
      - eval_time: 14m
        alertname: WrapalertEvidenceUnavailable
        exp_alerts: []
      - eval_time: 16m
        alertname: WrapalertEvidenceUnavailable
        exp_alerts:
          - exp_labels: {{severity: warning, instance: web1}}
            exp_annotations:
              summary: "wrapalert on web1 cannot verify any source"
              description: >-
                The kernel does not answer its sock_diag lookups (wrapalert status shows
                evidence.error): no refused connection is verified, so none can ban.
"""


@pytest.mark.system
def test_example_rules_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests: a daemon that stopped writing, an outbox non-empty for
    an hour, a sink failing for 15 minutes, bans unenforced for 2 minutes, evidence
    unavailable for 10, every fleet peer down for 10 and a heartbeat unsent for 15 (the
    daemon alive) each raise their alert, and not before."""
    tests = tmp_path / "rules_test.yml"
    tests.write_text(RULE_TESTS.format(rules=RULES))
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
