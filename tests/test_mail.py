"""Digest rendering: headers DESIGN.md promises, and event text that cannot escape."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from wrapalert.mail import Renderer, header_text, qualify
from wrapalert.model import Digest, GroupReport


def report(
    daemon: str = "sshd",
    addr: str = "192.0.2.1",
    events: int = 3,
    *,
    trusted: bool = True,
    name: str = "unknown",
) -> GroupReport:
    return GroupReport(
        key=(daemon, addr),
        labels=(("daemon", daemon), ("client_addr", addr)),
        reason="new group",
        events=events,
        total=events,
        first_seen=1_700_000_000.0,
        last_seen=1_700_000_060.0,
        group_first_seen=1_700_000_000.0,
        trusted=trusted,
        uid=0 if trusted else 1000,
        daemons=((daemon, events),),
        addrs=((addr, events),),
        names=((name, events),),
        users=(("unknown", events),),
    )


def reparse(msg: EmailMessage) -> EmailMessage:
    """What a mail reader sees: the bytes on the wire, parsed strictly."""
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.strict)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_digest_headers() -> None:
    """A digest carries the X-Wrapalert-* counts, Auto-Submitted, Date and a Message-ID."""
    d = Digest(
        host="web1",
        created=1_700_000_100.0,
        groups=(report(), report(addr="192.0.2.2", events=2), report("ftpd", events=1)),
    )
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    assert msg["X-Wrapalert-Events"] == "6"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert msg["X-Wrapalert-Held"] == "0"
    assert msg["X-Wrapalert-Host"] == "web1"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == f"<{d.id}@web1>"
    assert msg["Date"].datetime.timestamp() == 1_700_000_100.0
    assert msg["Subject"] == "[wrapalert] web1: 6 refused from 2 sources: sshd, ftpd"
    assert msg.get_content_type() == "multipart/alternative"


def test_same_digest_same_message_id() -> None:
    """Rendering a digest twice (a retry) gives the same Message-ID: duplicates are visible."""
    d = Digest(host="web1", created=1.0, groups=(report(),))
    r = Renderer("wrapalert@localhost", ("root",))
    assert r.render(d)["Message-ID"] == r.render(d)["Message-ID"]
    other = Digest(host="web1", created=2.0, groups=(report(),))
    assert r.render(other)["Message-ID"] != r.render(d)["Message-ID"]


def test_event_text_cannot_inject_headers() -> None:
    """CR/LF in an event value never starts a new header (Bcc injection)."""
    evil = "sshd\r\nBcc: victim@example.com\r\nX-Evil: 1"
    d = Digest(host="web1\r\nX-Host-Evil: 1", created=1.0, groups=(report(evil),))
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    assert msg["Bcc"] is None
    assert msg["X-Evil"] is None
    assert msg["X-Host-Evil"] is None
    assert "\n" not in msg["Subject"]


def test_html_part_escapes_event_text() -> None:
    """Markup in a client name is shown as text in the HTML part, never as markup."""
    d = Digest(host="web1", created=1.0, groups=(report(addr="<script>alert(1)</script>"),))
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    html = msg.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<script>" not in content
    assert "&lt;script&gt;" in content


def test_untrusted_groups_are_marked() -> None:
    """Reports from untrusted uids are set apart and say who sent them."""
    d = Digest(host="web1", created=1.0, groups=(report(), report(trusted=False)))
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    text = msg.get_body(("plain",))
    assert text is not None
    assert "reported by uid 1000, untrusted" in text.get_content()


def test_subject_is_bounded() -> None:
    """However many daemons, the subject stays one line of at most 120 characters."""
    groups = tuple(report(f"daemon{i:03d}", events=1) for i in range(200))
    msg = Renderer("wrapalert@localhost", ("root",)).render(
        Digest(host="web1", created=1.0, groups=groups)
    )
    assert len(msg["Subject"]) <= 120


def test_bare_local_parts_are_qualified() -> None:
    """`root` becomes root@host (a bare local part is refused over SMTP); full ones stay."""
    assert qualify("root", "web1") == "root@web1"
    assert qualify("ops@example.com", "web1") == "ops@example.com"


def test_header_text_removes_controls() -> None:
    """header_text turns control characters into single spaces and bounds the length."""
    assert header_text("a\r\n\tb\x00c") == "a b c"
    assert len(header_text("x" * 500)) == 120
