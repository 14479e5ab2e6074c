"""Notices: each a mail of its own (its templates, its subject naming the problem and the
file, X-Wrapalert-Notice), hostile text kept out of headers and markup, a stable
Message-ID, the JSON the state database keeps; and `wrapalert preview --notice`."""

from __future__ import annotations

import email
import email.policy
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import WRAPALERT, body, elements

from wrapalert import config
from wrapalert.mail import SUBJECT_MAX, Renderer
from wrapalert.notice import KINDS, Notice, Problem, Quiet, quiet_sentence
from wrapalert.preview import sample_notice

NOW = 1_700_000_000.0
UNTERMINATED = Problem(
    key="hook_line:/etc/hosts.deny:the file ends without a newline; ...",
    kind="hook_line",
    path="/etc/hosts.deny",
    line=21,
    message="the file ends without a newline; libwrap stops reading hosts.deny here and "
    "denies EVERY client that reaches it",
    fix="end the file with a newline (echo >> FILE)",
    since=NOW - 60,
)


def render(notice: Notice, template_dir: Path | None = None) -> EmailMessage:
    return Renderer("wrapalert@localhost", ("root",), template_dir).render_notice(notice)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_round_trips_through_json_with_its_id(kind: str) -> None:
    notice = sample_notice(config.Config(), kind, now=NOW)  # type: ignore[arg-type]
    again = Notice.from_json(notice.to_json())
    assert again == notice
    assert again.id == notice.id == Notice.from_json(notice.to_json()).id


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notice kind"):
        Notice("alarm-maybe", "web1", NOW)  # type: ignore[arg-type]


def test_alarm_off_is_a_mail_of_its_own_naming_the_problem_and_the_file() -> None:
    """Its own subject and header; no events (X-Wrapalert-Events 0), so the counts of all
    mails still add up; the text says what broke, where, and the fix."""
    msg = render(Notice("alarm-off", "web1", NOW, (UNTERMINATED,)))
    assert msg["Subject"] == (
        "[wrapalert] web1: ALARM OFF: /etc/hosts.deny: the file ends without a newline"
    )
    assert msg["X-Wrapalert-Notice"] == "alarm-off"
    assert (msg["X-Wrapalert-Events"], msg["X-Wrapalert-Untrusted"]) == ("0", "0")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Wrapalert-Host"] == "web1"
    text = body(msg)
    assert "the alarm is OFF" in text
    assert "/etc/hosts.deny line 21:" in text
    assert "fix: end the file with a newline (echo >> FILE)" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "denies EVERY client" in " ".join(elements(body(msg, "html")).text)


def test_the_same_notice_has_the_same_message_id() -> None:
    first = render(Notice("alarm-off", "web1", NOW, (UNTERMINATED,)))
    again = render(Notice("alarm-off", "web1", NOW, (UNTERMINATED,)))
    other = render(Notice("alarm-on", "web1", NOW, (UNTERMINATED,)))
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]


def test_alarm_on_and_quiet_subjects() -> None:
    fixed = render(Notice("alarm-on", "web1", NOW, (UNTERMINATED,)))
    assert fixed["Subject"] == "[wrapalert] web1: alarm on again: /etc/hosts.deny fixed"
    assert fixed["X-Wrapalert-Notice"] == "alarm-on"
    quiet = render(Notice("quiet", "web1", NOW, quiet=Quiet("sshd", NOW - 48 * 3600, 310.4)))
    assert quiet["Subject"] == "[wrapalert] web1: quiet: sshd: no refusals for 48 h"
    assert (
        "sshd: no refusals for 48 h; it averaged 310 a day: is the hook still in place?"
        in " ".join(body(quiet).split())
    )


def test_the_quiet_sentence_is_the_issues() -> None:
    quiet = Quiet("sshd", NOW - 48 * 3600, 310.0)
    assert quiet_sentence(quiet, NOW) == (
        "sshd: no refusals for 48 h; it averaged 310 a day: is the hook still in place?"
    )
    assert "averaged 2.5 a day" in quiet_sentence(Quiet("in.ftpd", NOW - 7200, 2.5), NOW)


def test_hostile_text_stays_out_of_the_headers_and_the_markup() -> None:
    """A table's text reaches a problem's message (a rule quoted): never a header line of
    its own, never markup."""
    evil = Problem(
        key="shadowed:/etc/hosts.allow:x",
        kind="hook_line",
        path="/etc/hosts.deny\r\nBcc: victim@example.org",
        line=1,
        message="<script>alert(1)</script>\r\nX-Injected: yes",
        fix="<b>fix</b>",
    )
    msg = render(Notice("alarm-off", "web1", NOW, (evil,)))
    raw = bytes(msg)
    assert b"\r\nBcc:" not in raw
    assert b"\r\nX-Injected:" not in raw
    assert len(msg["Subject"]) <= SUBJECT_MAX
    html = body(msg, "html")
    assert "<script>" not in html
    assert "script" not in elements(html).tags
    assert "&lt;script&gt;" in html


def test_a_users_notice_template_is_used_and_a_broken_one_falls_back(tmp_path: Path) -> None:
    """[digest] template_dir overrides notice*.j2 as it does the digest's; a template that
    fails costs nothing but the log line: the built-in one is used."""
    (tmp_path / "notice.txt.j2").write_text("ours: {{ headline }} on {{ host }}\n")
    notice = Notice("alarm-off", "web1", NOW, (UNTERMINATED,))
    assert body(render(notice, tmp_path)) == "ours: the alarm is OFF on web1\n"
    (tmp_path / "notice.txt.j2").write_text("{{ no_such_value }}\n")
    assert "the alarm is OFF" in body(render(notice, tmp_path))


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("alarm-off", "ALARM OFF: /etc/hosts.deny"),
        ("alarm-on", "alarm on again: /etc/hosts.allow fixed (+1 more)"),
        ("quiet", "quiet: sshd: no refusals for 48 h"),
    ],
)
def test_preview_prints_each_notice(kind: str, says: str) -> None:
    """`wrapalert preview --notice KIND`: the sample notice, as mail (eml parses strictly)."""
    done = subprocess.run(
        [WRAPALERT, "preview", "--notice", kind], capture_output=True, check=True, timeout=60
    )
    out = done.stdout.decode()
    assert out.startswith("Subject: [wrapalert] ")
    assert says in out.splitlines()[0]
    eml = subprocess.run(
        [WRAPALERT, "preview", "--notice", kind, "--format", "eml"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    msg = email.message_from_bytes(eml, policy=email.policy.strict)
    assert msg["X-Wrapalert-Notice"] == kind
