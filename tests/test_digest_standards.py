"""Digest mails as RFC 5322/2045/3834 want them, read back by Python's strict parser."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from email.message import EmailMessage

from wrapalert import config
from wrapalert.mail import MAX_LINE, Renderer
from wrapalert.model import Digest
from wrapalert.preview import build_digest, parse_events, sample_digest

NOW = 1_700_000_000.0


def strict(msg: EmailMessage) -> EmailMessage:
    """The bytes on the wire, parsed with every defect an error."""
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.strict)
    assert isinstance(parsed, EmailMessage)
    return parsed


def pathological() -> Digest:
    """Hundreds of groups with 255-byte daemon, name and user values, many of them non-ASCII.

    wire.parse admits only libwrap's ASCII, so the non-ASCII values are put in after it:
    the renderer must hold up whatever reaches it.
    """
    lines = [f"d=d{i:03d} a=10.0.{i // 250}.{i % 250}" for i in range(300)]
    d = build_digest(parse_events("\n".join(lines)), config.Config(), NOW, host="h" * 200 + "ö")
    groups = []
    for i, g in enumerate(d.groups):
        daemon = (f"d{i:03d}" + "x" * 251) if i % 2 else (f"d{i:03d}" + "ü" * 125)
        name = ("n" * 250 + f"{i:05d}") if i % 3 else ("名" * 80 + f"{i:05d}")
        groups.append(
            replace(
                g,
                labels=tuple((k, daemon if k == "daemon" else v) for k, v in g.labels),
                daemons=((daemon, g.events),),
                names=((name, g.events),),
                users=(("é" * 127, g.events),),
            )
        )
    return replace(d, groups=tuple(groups), held=12345, silenced=678, merged=4)


def test_required_headers_are_present_and_valid() -> None:
    """Date, Message-ID, MIME-Version, Auto-Submitted, From, To and Subject parse strictly."""
    d = sample_digest(config.Config(), NOW)
    msg = strict(Renderer("wrapalert@localhost", ("root",)).render(d))
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime.timestamp() == NOW
    # strip(): a long host name folds the header after its colon (RFC 5322 allows it).
    assert msg["Message-ID"].strip() == f"<{d.id}@{d.host}>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["From"].addresses[0].addr_spec == "wrapalert@localhost"
    assert msg["To"].addresses[0].username == "root"
    assert msg["Subject"].startswith("[wrapalert] ")


def test_both_parts_declare_charset_and_transfer_encoding() -> None:
    """The text and HTML parts say charset=utf-8 and name their transfer encoding."""
    msg = strict(Renderer("a@b", ("root",)).render(sample_digest(config.Config(), NOW)))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("7bit", "quoted-printable")


def test_pathological_digest_keeps_every_line_within_998_bytes() -> None:
    """300 groups of 255-byte non-ASCII values still give lines of at most 998 bytes."""
    raw = bytes(Renderer("a@b", ("root",)).render(pathological()))
    assert max(len(line) for line in raw.split(b"\n")) <= MAX_LINE


def test_pathological_digest_parses_strictly_and_decodes_intact() -> None:
    """The pathological digest parses under the strict policy and its parts decode back."""
    msg = strict(Renderer("a@b", ("root",)).render(pathological()))
    assert msg["X-Wrapalert-Events"] == "300"
    assert msg["X-Wrapalert-Held"] == "12345"
    assert len(msg["Subject"]) <= 78
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None
    assert html is not None
    # Both /24s are sweeps, one row each, which names its first daemon (cut to the column).
    assert "d000" + "ü" * 10 in plain.get_content()
    assert "d000" + "ü" * 125 in html.get_content()


def test_non_ascii_mail_is_pure_ascii_on_the_wire() -> None:
    """Non-ASCII hosts and values are encoded (RFC 2047, quoted-printable): no 8-bit bytes."""
    raw = bytes(Renderer("a@b", ("root",)).render(pathological()))
    assert raw.isascii()


def test_plain_ascii_parts_stay_readable_7bit() -> None:
    """An ASCII-only digest is sent as 7bit text, readable in the raw message."""
    d = build_digest(parse_events("d=sshd a=192.0.2.1"), config.Config(), NOW, "web1")
    msg = strict(Renderer("a@b", ("root",)).render(d))
    assert [p["Content-Transfer-Encoding"] for p in msg.iter_parts()] == ["7bit", "7bit"]
