"""`wrapalert preview`: the digest for sample or given events, printed and never sent."""

from __future__ import annotations

import email
import email.policy
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import WRAPALERT

from wrapalert import config, story
from wrapalert.preview import EventsError, build_digest, parse_events, sample_digest

NOW = 1_700_000_000.0


def preview(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [WRAPALERT, "preview", *args], capture_output=True, check=False, timeout=60
    )


def test_sample_preview_prints_subject_and_text() -> None:
    """Without --events, preview prints the built-in sample's subject and text part, which
    tells a story of every kind."""
    result = preview()
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("Subject: [wrapalert] ")
    assert "\nSources\n" in out
    block = out.split("\nDaemons: ", 1)[1].split("\n\n", 2)[1]
    told = [line[:12].strip() for line in block.splitlines() if not line.startswith(" ")]
    assert told == [kind.upper() for kind in story.KINDS]
    assert "reported by uid 1000, untrusted: 1 event," in out


def test_html_preview_is_the_html_part() -> None:
    """--format html prints the HTML part, a whole document."""
    result = preview("--format", "html")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("<!DOCTYPE html>")
    assert out.rstrip().endswith("</html>")


def test_eml_preview_is_a_whole_message(tmp_path: Path) -> None:
    """--format eml prints the message as it would be sent; it parses strictly."""
    events = tmp_path / "events"
    events.write_text("d=sshd a=192.0.2.1 count=4\nd=in.ftpd a=192.0.2.2\n")
    result = preview("--format", "eml", "--events", str(events))
    assert result.returncode == 0, result.stderr
    msg = email.message_from_bytes(result.stdout, policy=email.policy.strict)
    assert isinstance(msg, EmailMessage)
    assert msg["X-Wrapalert-Events"] == "5"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert msg["Message-ID"]


def test_events_file_counts_reach_the_digest(tmp_path: Path) -> None:
    """Each line of an events file is one event (or `count` of them) in the printed digest."""
    events = tmp_path / "events"
    events.write_text(
        "# a comment, then a blank line\n\n"
        "d=sshd a=203.0.113.7 n=scan.example count=12 ago=3m\n"
        "daemon=vsftpd client_addr=203.0.113.7\n"
    )
    # Two daemons make a scan only when [scan] says so: the preview uses the daemon's rule.
    cfg = tmp_path / "wrapalert.toml"
    # A short host name of its own: the system's could cut the subject's end (78 characters).
    cfg.write_text('[daemon]\nhostname = "web1"\n\n[scan]\ndaemons = 2\n')
    result = preview("-c", str(cfg), "--events", str(events))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Subject: [wrapalert] web1: " in out  # the configured host name, as the daemon's
    assert "scan from 203.0.113.7 (2 daemons); 13 refused, 1 source\n" in out
    assert "SCAN        203.0.113.7 tried 2 daemons, 13 refused: sshd, vsftpd\n" in out


def test_bad_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    """Every bad line is named by file and line number; the exit code is 1 and nothing prints."""
    events = tmp_path / "events"
    events.write_text("d=sshd a=192.0.2.1\na=192.0.2.2\n# fine\nd=sshd a=not-an-ip\nd=sshd x=1\n")
    result = preview("--events", str(events))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"wrapalert: {events}:2: missing_daemon",
        f"wrapalert: {events}:4: bad_addr",
        f"wrapalert: {events}:5: unknown key 'x'",
    ]


def test_missing_events_file_exits_1(tmp_path: Path) -> None:
    """An events file that cannot be read is an error naming it, exit 1."""
    result = preview("--events", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert str(tmp_path / "absent") in result.stderr.decode()


def test_preview_uses_the_configured_templates(tmp_path: Path) -> None:
    """-c FILE applies that configuration's template_dir, as the daemon would."""
    (tmp_path / "subject.j2").write_text("Custom: {{ events }} on {{ host }}")
    cfg = tmp_path / "wrapalert.toml"
    cfg.write_text(f'[digest]\ntemplate_dir = "{tmp_path}"\n')
    result = preview("-c", str(cfg))
    assert result.returncode == 0, result.stderr
    total = sample_digest(config.Config()).trusted_events
    assert result.stdout.decode().startswith(f"Subject: Custom: {total} on ")


def test_events_are_aggregated_in_time_order() -> None:
    """`ago` places events in time: the report's first and last seen follow it, not file order."""
    planned = parse_events("d=sshd a=192.0.2.1 ago=1m\nd=sshd a=192.0.2.1 ago=10m count=2")
    d = build_digest(planned, config.Config(), NOW, "web1")
    (g,) = d.groups
    assert (g.events, g.first_seen, g.last_seen) == (3, NOW - 600, NOW - 60)


def test_uid_outside_trusted_uids_is_untrusted() -> None:
    """`uid=N` makes the sender N: not in trusted_uids, its report is marked untrusted."""
    d = build_digest(parse_events("d=sshd a=192.0.2.1 uid=1000"), config.Config(), NOW, "w")
    assert [(g.trusted, g.uid) for g in d.groups] == [(False, 1000)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("d=sshd a=192.0.2.1 count=0", "count must be 1 to 100000"),
        ("d=sshd d=ftpd", "duplicate key 'd'"),
        ("d='sshd", "No closing quotation"),
        ("d=sshd justaword", "expected KEY=VALUE, got 'justaword'"),
        ("d=sshd ago=soon", "bad duration 'soon'"),
    ],
)
def test_preview_keys_are_validated(line: str, reason: str) -> None:
    """Bad preview keys, quoting and duplicates are errors with the line number, not guesses."""
    with pytest.raises(EventsError) as caught:
        parse_events(f"# header\n{line}", "f")
    (problem,) = caught.value.problems
    assert problem.startswith("f:2: ")
    assert reason in problem
