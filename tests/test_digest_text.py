"""The text part: what a terminal reader sees, built from real Aggregator reports."""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import replace

import pytest
from helpers import preview_digest

from wrapalert import config
from wrapalert.mail import Renderer
from wrapalert.model import Digest, Event
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.preview import parse_events, sample_digest

NOW = 1_700_000_000.0


def text(d: Digest) -> str:
    part = Renderer("wrapalert@localhost", ("root",)).render(d).get_body(("plain",))
    assert part is not None
    content: str = part.get_content()
    return content


def hms(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def test_source_row_has_every_column() -> None:
    """A source's row shows address, name, its own count, last seen, status and daemons."""
    out = text(
        preview_digest("d=sshd a=203.0.113.7 n=scan.example ago=2m count=5\nd=sshd a=203.0.113.7")
    )
    row = f"203.0.113.7     scan.example      6 {hms(NOW)} new        sshd\n"
    assert row in out


def test_source_row_lists_every_daemon_of_its_address() -> None:
    """One row per address: the groups of its daemons are one row, with each daemon and
    its count in it."""
    out = text(preview_digest("d=sshd a=203.0.113.7 count=3\nd=in.ftpd a=203.0.113.7"))
    rows = [line for line in out.splitlines() if line.startswith("203.0.113.7 ")]
    assert len(rows) == 1
    assert rows[0].endswith(" new        sshd 3, in.ftpd 1")
    assert "      4 " in rows[0]


def test_sources_are_sorted_by_severity_then_count() -> None:
    """A critical source comes first whatever its count; the rest follow busiest first."""
    d = preview_digest("d=sshd a=192.0.2.1 count=9\nd=sshd a=192.0.2.2 count=5\nd=sshd a=192.0.2.3")
    groups = tuple(
        replace(g, severity="critical") if g.label("client_addr") == "192.0.2.3" else g
        for g in d.groups
    )
    rows = [line.split(" ", 1)[0] for line in text(replace(d, groups=groups)).splitlines()]
    rows = [addr for addr in rows if addr.startswith("192.0.2.")]
    assert rows == ["192.0.2.3", "192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize(
    ("reason", "age_before_window", "earlier_events", "shown"),
    [
        ("new group", 0, 0, "new"),
        ("shutdown flush", 0, 0, "new"),  # flushed before its first report: still new
        ("shutdown flush", 600, 4, "repeat"),
        ("new activity", 600, 4, "repeat"),
        ("new activity", 7200, 4, "persistent"),
    ],
)
def test_status_follows_reason_and_age(
    reason: str, age_before_window: float, earlier_events: int, shown: str
) -> None:
    """new = first report; persistent = seen over an hour before the window; else repeat."""
    d = preview_digest("d=sshd a=203.0.113.7 count=3")
    (g,) = d.groups
    g = replace(
        g,
        reason=reason,
        total=g.events + earlier_events,
        group_first_seen=g.first_seen - age_before_window,
    )
    rows = [line for line in text(replace(d, groups=(g,))).splitlines() if line.startswith("203.")]
    assert f" {shown:<10} sshd" in rows[0]


def test_sample_digest_fits_80_columns() -> None:
    """Every line of the sample digest's text part fits an 80-column terminal (on a host
    with a short name: the headline names the host and does not wrap)."""
    cfg = config.loads('[daemon]\nhostname = "web1"\n')
    lines = text(sample_digest(cfg, NOW)).splitlines()
    assert [line for line in lines if len(line) > 80] == []


def test_summary_states_window_daemons_and_new_sources() -> None:
    """The summary says how many, from how many sources (how many new), when and which daemons."""
    out = text(preview_digest("d=sshd a=192.0.2.1 ago=3m count=4\nd=in.ftpd a=192.0.2.2"))
    start = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(NOW - 180))
    end = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(NOW))
    assert out.startswith("wrapalert on web1: 5 refused connections from 2 sources, 2 new\n")
    assert f"From {start} to {end} (3 min)\n" in out
    assert "Daemons: sshd 4, in.ftpd 1\n" in out


def test_overflow_group_is_a_rollup_not_a_source() -> None:
    """Past every group limit the overflow group is listed under roll-ups, not as a source."""
    cfg = replace(
        config.Config(),
        digest=replace(config.DigestConfig(), group_by=("daemon",)),  # no network to roll up by
        limits=config.LimitsConfig(max_groups=2),
    )
    d = preview_digest("\n".join(f"d=d{i:02d} a=192.0.2.{i} count=2" for i in range(60)), cfg)
    (overflow,) = [g for g in d.groups if g.level == "overflow"]
    out = text(d)
    line = f"group=(overflow): {overflow.events} refused from {len(overflow.addrs)} addresses, "
    assert line + "past every group limit\n" in out
    assert "(overflow)" not in out.split("\nSources\n", 1)[1].split("Roll-ups", 1)[0]


def test_network_rollup_is_listed_with_its_count() -> None:
    """Sources rolled up into their /24 past max_groups are listed under roll-ups, not as rows."""
    cfg = replace(config.Config(), limits=config.LimitsConfig(max_groups=2))
    lines = ["d=sshd a=192.0.2.1", "d=sshd a=192.0.2.2"]
    lines += [f"d=sshd a=198.51.100.{i} count=2" for i in range(1, 6)]
    out = text(preview_digest("\n".join(lines), cfg))
    assert (
        "daemon=sshd  client_addr=198.51.100.0/24: 10 refused from 5 addresses, "
        "rolled up by network\n"
    ) in out
    assert not re.search(r"^198\.51\.100\.\d+ ", out, re.MULTILINE)  # no source row


def test_addresses_past_the_detail_bound_are_a_rollup() -> None:
    """A group with more addresses than it lists one by one says how many events those made."""
    cfg = replace(config.Config(), digest=replace(config.DigestConfig(), group_by=("daemon",)))
    out = text(
        preview_digest("\n".join(f"d=sshd a=10.0.{i // 200}.{i % 200}" for i in range(70)), cfg)
    )
    assert "daemon=sshd: 6 of 70 refused came from addresses past the 64 listed\n" in out


def scan_config(daemons: int = 3, sources: int = 16) -> config.Config:
    """Defaults but for the `[scan]` thresholds the detector uses."""
    return replace(config.Config(), scan=config.ScanConfig(daemons=daemons, sources=sources))


def test_one_address_probing_several_daemons_is_a_scan() -> None:
    """An address refused by `[scan] daemons` daemons is told as a scan, with the command
    to silence it."""
    lines = "d=sshd a=203.0.113.7 count=3\nd=in.ftpd a=203.0.113.7\nd=sshd a=192.0.2.1"
    out = text(preview_digest(lines, scan_config(daemons=2)))
    assert "SCAN        203.0.113.7 tried 2 daemons, 4 refused: in.ftpd, sshd\n" in out
    assert "            wrapalert silence add --for 2h client=203.0.113.7\n" in out
    assert "192.0.2.1 tried" not in out


def test_fewer_daemons_than_the_scan_threshold_are_no_scan() -> None:
    """Two daemons refusing one address are no scan under the default `[scan] daemons = 3`."""
    d = preview_digest("d=sshd a=203.0.113.7 count=3\nd=in.ftpd a=203.0.113.7")
    assert "SCAN " not in text(d)
    assert Renderer("wrapalert@localhost", ("root",)).render(d)["X-Wrapalert-Scans"] == "0"


def test_many_addresses_in_one_24_are_a_sweep() -> None:
    """`[scan] sources` addresses of one IPv4 /24 make a sweep; silencing it takes the prefix."""
    lines = "\n".join(f"d=sshd a=198.51.100.{i}" for i in (3, 40, 77, 200))
    out = text(preview_digest(lines, scan_config(sources=4)))
    assert "SWEEP       198.51.100.0/24: 4 addresses, 4 refused: sshd\n" in out
    assert "            wrapalert silence add --for 2h daemon=sshd client=198.51.100.0/24\n" in out


def test_many_addresses_in_one_64_are_a_sweep() -> None:
    """`[scan] sources` addresses of one IPv6 /64 make a sweep too."""
    lines = "\n".join(f"d=sshd a=2001:db8:0:1::{i:x}" for i in (1, 2, 0x50, 0xFFFF))
    out = text(preview_digest(lines, scan_config(sources=4)))
    assert "SWEEP       2001:db8:0:1::/64: 4 addresses, 4 refused: sshd\n" in out


def test_few_addresses_in_one_24_are_no_sweep() -> None:
    """Fewer addresses of one /24 than `[scan] sources` are not called a sweep."""
    out = text(
        preview_digest(
            "\n".join(f"d=sshd a=198.51.100.{i}" for i in (3, 40, 77)), scan_config(sources=4)
        )
    )
    assert "SWEEP" not in out


def test_untrusted_reports_say_who_sent_them() -> None:
    """An untrusted report is listed apart, with the sender's uid and its count."""
    out = text(preview_digest("d=sshd a=192.0.2.1\nd=sshd a=192.0.2.9 uid=1000 count=2"))
    assert "reported by uid 1000, untrusted: 2 events" in out
    assert "192.0.2.9" not in out.split("Untrusted reports", 1)[0]


def test_held_merged_and_silenced_counts_are_shown() -> None:
    """Events held back by the rate limit and silenced events are stories of the lead block."""
    d = replace(preview_digest("d=sshd a=192.0.2.1 count=9"), held=7, merged=3, silenced=4)
    out = text(d)
    assert "HELD        7 events held back by the rate limit, sent late (3 digests merged)\n" in out
    assert "SILENCED    4 events silenced since the last digest, not listed\n" in out


def test_zero_held_and_silenced_are_not_mentioned() -> None:
    """With nothing held back or silenced, the summary does not mention either."""
    out = text(preview_digest("d=sshd a=192.0.2.1"))
    assert "rate limit" not in out
    assert "SILENCED" not in out


def test_silence_command_is_shell_quoted() -> None:
    """The printed silence command quotes attacker-chosen text, so pasting it runs nothing else.

    wire.parse stops `;` long before a digest, so it is put in after: defence in depth.
    """
    d = preview_digest("d=sshd a=203.0.113.7 count=20")  # a brute force: its story has the command
    hostile = "sshd;reboot"
    group = replace(
        d.groups[0],
        labels=(("daemon", hostile), ("client_addr", "203.0.113.7")),
        daemons=((hostile, 20),),
    )
    out = text(replace(d, groups=(group,)))
    lines = [line for line in out.splitlines() if "wrapalert silence add" in line]
    assert len(lines) == 2  # the brute-force story's command and the sources table's
    for line in lines:
        assert "'daemon=sshd;reboot'" in line
        assert shlex.split(line) == [
            "wrapalert", "silence", "add", "--for", "2h", "daemon=sshd;reboot",
            "client=203.0.113.7",
        ]  # fmt: skip


def test_every_sources_table_names_the_command_for_its_busiest_source() -> None:
    """A digest with no story still says how to silence its busiest source (issue 20's
    regression: only scan, sweep and brute-force stories used to carry the command)."""
    d = preview_digest(
        "d=sshd a=192.0.2.1 count=2\nd=vsftpd a=192.0.2.9 count=3\nd=sshd a=192.0.2.5"
    )
    assert not [g for g in d.groups if g.events >= 20]  # below every story's threshold
    out = text(d)
    assert "To silence the busiest source for 2h:" in out
    (line,) = [line for line in out.splitlines() if "wrapalert silence add" in line]
    assert shlex.split(line) == [
        "wrapalert", "silence", "add", "--for", "2h", "daemon=vsftpd", "client=192.0.2.9",
    ]  # fmt: skip


def test_sources_table_is_bounded() -> None:
    """Past TOP_SOURCES rows the remaining addresses are summed in one line."""
    # One address per /24: addresses of one network would be a sweep, one row.
    out = text(preview_digest("\n".join(f"d=sshd a=10.0.{i}.1 count={i}" for i in range(1, 41))))
    rows = re.findall(r"^10\.0\.\d+\.1 .*$", out, re.MULTILINE)
    assert len(rows) == 30
    assert rows[0].startswith("10.0.40.1 ")
    assert f"... and 10 more rows: {sum(range(1, 11))} refused\n" in out


def test_timeline_bars_add_up_to_the_events() -> None:
    """The text timeline has one bar per interval and its counts add up to the digest's events."""
    out = text(
        preview_digest("d=sshd a=192.0.2.1 ago=9m count=5\nd=sshd a=192.0.2.2 ago=1m count=2")
    )
    chart = out.split("Refused connections per 1 min\n", 1)[1].split("\n\n", 1)[0]
    counts = [int(line.split()[-1]) for line in chart.splitlines()]
    assert len(counts) in (9, 10)  # minute buckets: the first may start mid-minute
    assert sum(counts) == 7
    assert re.search(r"^  \d\d:\d\d #{40} +5$", chart, re.MULTILINE)


def test_quiet_group_is_listed_apart_and_named_in_the_subject() -> None:
    """A group's last "repeat" report (nothing new) is listed as quiet, not as a source."""
    cfg = config.Config()
    agg = Aggregator(cfg.digest, cfg.limits.max_groups)
    (event,) = [Event(p.fields, NOW) for p in parse_events("d=sshd a=192.0.2.1")]
    agg.add(event, NOW)
    assert agg.collect(NOW + cfg.digest.group_wait)  # its first report
    later = NOW + cfg.digest.group_wait + cfg.digest.repeat_interval
    (quiet,) = agg.collect(later)
    msg = Renderer("a@b", ("root",)).render(Digest(host="web1", created=later, groups=(quiet,)))
    plain = msg.get_body(("plain",))
    assert plain is not None
    out = plain.get_content()
    assert msg["Subject"] == "[wrapalert] web1: no new refusals; 1 group quiet again"
    assert "daemon=sshd  client_addr=192.0.2.1\n  last refused " in out
    assert "\nSources\n" not in out
