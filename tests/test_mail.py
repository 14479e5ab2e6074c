"""Digest rendering: headers DESIGN.md promises, and event text that cannot escape."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from email.message import EmailMessage

from helpers import group_report

from wrapalert.mail import THREAD_REFS, Renderer, header_text, msgid_domain, qualify
from wrapalert.model import Digest
from wrapalert.story import StoryRule


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
        groups=(
            group_report(events=3),
            group_report(addr="192.0.2.2", events=2),
            group_report("ftpd", events=1),
        ),
    )
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    assert msg["X-Wrapalert-Events"] == "6"
    assert msg["X-Wrapalert-Untrusted"] == "0"
    assert msg["X-Wrapalert-Sources"] == "2"
    assert msg["X-Wrapalert-Held"] == "0"
    assert msg["X-Wrapalert-Host"] == "web1"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == f"<{d.id}@web1>"
    assert msg["Date"].datetime.timestamp() == 1_700_000_100.0
    assert msg["Subject"] == "[wrapalert] web1: 6 refused from 2 sources (2 new): sshd, ftpd"
    assert msg.get_content_type() == "multipart/alternative"


def test_same_digest_same_message_id() -> None:
    """Rendering a digest twice (a retry) gives the same Message-ID: duplicates are visible."""
    d = Digest(host="web1", created=1.0, groups=(group_report(events=3),))
    r = Renderer("wrapalert@localhost", ("root",))
    assert r.render(d)["Message-ID"] == r.render(d)["Message-ID"]
    other = Digest(host="web1", created=2.0, groups=(group_report(events=3),))
    assert r.render(other)["Message-ID"] != r.render(d)["Message-ID"]


def test_event_text_cannot_inject_headers() -> None:
    """CR/LF in an event value never starts a new header (Bcc injection)."""
    evil = "sshd\r\nBcc: victim@example.com\r\nX-Evil: 1"
    d = Digest(host="web1\r\nX-Host-Evil: 1", created=1.0, groups=(group_report(evil, events=3),))
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    assert msg["Bcc"] is None
    assert msg["X-Evil"] is None
    assert msg["X-Host-Evil"] is None
    assert "\n" not in msg["Subject"]


def test_html_part_escapes_event_text() -> None:
    """Markup in a client name is shown as text in the HTML part, never as markup."""
    d = Digest(
        host="web1", created=1.0, groups=(group_report(addr="<script>alert(1)</script>", events=3),)
    )
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    html = msg.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<script>" not in content
    assert "&lt;script&gt;" in content


def test_untrusted_groups_are_marked() -> None:
    """Reports from untrusted uids are set apart and say who sent them."""
    d = Digest(
        host="web1",
        created=1.0,
        groups=(group_report(events=3), group_report(trusted=False, uid=1000, events=3)),
    )
    msg = reparse(Renderer("wrapalert@localhost", ("root",)).render(d))
    text = msg.get_body(("plain",))
    assert text is not None
    assert "reported by uid 1000, untrusted" in text.get_content()


def test_subject_is_bounded() -> None:
    """However many daemons, the subject stays one line of at most 78 characters."""
    groups = tuple(group_report(f"daemon{i:03d}", events=1) for i in range(200))
    msg = Renderer("wrapalert@localhost", ("root",)).render(
        Digest(host="web1", created=1.0, groups=groups)
    )
    assert len(msg["Subject"]) <= 78


def test_bare_local_parts_are_qualified() -> None:
    """`root` becomes root@host (a bare local part is refused over SMTP); full ones stay."""
    assert qualify("root", "web1") == "root@web1"
    assert qualify("ops@example.com", "web1") == "ops@example.com"


def test_header_text_removes_controls() -> None:
    """header_text turns control characters into single spaces and bounds the length."""
    assert header_text("a\r\n\tb\x00c") == "a b c"
    assert len(header_text("x" * 500)) == 120
    assert len(header_text("x" * 500, 78)) == 78


def test_headline_counts_new_sources_only() -> None:
    """The headline's "N new" counts the addresses of first-time groups, not repeats; the
    subject tells the repeat."""
    groups = (
        group_report(addr="192.0.2.1", events=3),
        replace(group_report(addr="192.0.2.2", events=3), reason="new activity"),
    )
    msg = Renderer("a@b", ("root",)).render(Digest(host="web1", created=1.0, groups=groups))
    plain = msg.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().startswith(
        "wrapalert on web1: 6 refused connections from 2 sources, 1 new\n"
    )
    assert msg["Subject"] == (
        "[wrapalert] web1: repeat offender 192.0.2.2 (3 tries); 6 refused, 2 sources"
    )


def test_subject_names_untrusted_sources() -> None:
    """Untrusted reports are counted apart in the subject (reports, not sources), so a
    forgery never looks real."""
    groups = (
        group_report(addr="192.0.2.1", events=3),
        group_report(addr="192.0.2.9", trusted=False, uid=1000, events=3),
    )
    msg = Renderer("a@b", ("root",)).render(Digest(host="web1", created=1.0, groups=groups))
    assert msg["Subject"].startswith(
        "[wrapalert] web1: 3 refused from 1 source (1 new, 3 untrusted)"
    )
    assert "192.0.2.9" not in msg["Subject"]


def test_subject_cuts_the_daemon_list_between_names() -> None:
    """Daemons that do not fit end the subject as "…", never half a name."""
    groups = tuple(group_report(f"daemon-number-{i:02d}", events=50 - i) for i in range(20))
    renderer = Renderer("a@b", ("root",), story=StoryRule(brute_force=1000))  # no story to tell
    subject = renderer.render(Digest(host="web1", created=1.0, groups=groups))["Subject"]
    assert len(subject) <= 78
    assert subject.endswith(", …")
    names = subject.split(": ", 2)[2].removesuffix(", …").split(", ")
    assert names == [f"daemon-number-{i:02d}" for i in range(len(names))]


def test_non_ascii_host_survives_the_subject() -> None:
    """A non-ASCII host name is RFC 2047-encoded on the wire and decodes back intact."""
    d = Digest(host="wébserveur-ü", created=1.0, groups=(group_report(events=3),))
    msg = Renderer("a@b", ("root",)).render(d)
    raw = bytes(msg)
    assert raw.isascii()
    assert b"=?utf-8?" in raw
    assert reparse(msg)["Subject"].startswith("[wrapalert] wébserveur-ü: 3 refused")


def test_digests_about_one_group_share_a_thread() -> None:
    """Two digests about the same group carry the same group msg-id in References."""
    r = Renderer("a@b", ("root",))
    first = reparse(r.render(Digest(host="web1", created=1.0, groups=(group_report(events=3),))))
    later = reparse(r.render(Digest(host="web1", created=400.0, groups=(group_report(events=9),))))
    assert first["Message-ID"] != later["Message-ID"]
    assert first["In-Reply-To"] == later["In-Reply-To"]
    assert first["References"] == later["References"]
    assert re.fullmatch(r"<wrapalert-group-[0-9a-f]{16}@web1>", first["References"])


def test_different_groups_have_different_threads() -> None:
    """Each group has its own thread id; a digest refers to all of its groups."""
    a, b = group_report(addr="192.0.2.1", events=5), group_report(addr="192.0.2.2", events=2)
    r = Renderer("a@b", ("root",))
    both = reparse(r.render(Digest(host="web1", created=1.0, groups=(a, b))))
    only_b = reparse(r.render(Digest(host="web1", created=1.0, groups=(b,))))
    refs = both["References"].split()
    assert len(refs) == 2
    assert refs[0] == both["In-Reply-To"]  # the busiest group
    assert refs[1] == only_b["References"]


def test_references_are_bounded() -> None:
    """A digest of hundreds of groups refers to at most THREAD_REFS of them."""
    groups = tuple(group_report(addr=f"192.0.2.{i}", events=i + 1) for i in range(200))
    msg = reparse(Renderer("a@b", ("root",)).render(Digest(host="w", created=1.0, groups=groups)))
    assert len(msg["References"].split()) == THREAD_REFS


def test_long_thread_ids_are_never_encoded_words() -> None:
    """Msg-ids longer than a header line stay verbatim (encoded words would break threading)."""
    host = "h" * 180
    d = Digest(
        host=host,
        created=1.0,
        groups=(group_report(events=3), group_report(addr="192.0.2.2", events=3)),
    )
    raw = bytes(Renderer("a@b", ("root",)).render(d))
    head = raw.split(b"\n\n", 1)[0].decode("ascii")
    refs = re.search(r"^References: (.*?)\n(?!\s)", head, re.MULTILINE | re.DOTALL)
    assert refs is not None
    assert "=?" not in refs.group(1)
    assert all(x.endswith(f"@{host}>") for x in refs.group(1).split())


def test_message_id_domain_is_ascii() -> None:
    """Non-ASCII or odd host names give an ASCII msg-id domain (IDNA, else punycode)."""
    assert msgid_domain("web1") == "web1"
    assert msgid_domain("bücher.example") == "xn--bcher-kva.example"
    assert msgid_domain("web1\r\nX-Evil: 1").isascii()
    assert msgid_domain("ü" * 70).isascii()  # an IDN label over 63 octets: punycode
    assert msgid_domain("") == "localhost"


def test_a_long_host_header_stays_matchable() -> None:
    """X-Wrapalert-Host is one plain line even for a long host name, so filters match it."""
    host = "mail-gateway-01.very-long-datacenter-subdomain-name.example-corporation.internal"
    msg = Renderer("wrapalert@localhost", ("root",)).render(
        Digest(host=host, created=1.0, groups=(group_report(events=3),))
    )
    assert f"\nX-Wrapalert-Host: {host}\n" in bytes(msg).decode().replace("\r\n", "\n")
