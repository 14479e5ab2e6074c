"""What the kernel vouched for shows wherever a report goes: digests (a quiet marker on
rows not verified), forwarded records (syslog, journald, jsonl, Alertmanager, webhooks),
held counts and the state database."""

from __future__ import annotations

import json

from helpers import event, one_group, preview_digest

from wrapalert import config
from wrapalert.digest_view import context, unverified
from wrapalert.mail import Renderer
from wrapalert.model import Digest, Event, digest_from_json, digest_to_json
from wrapalert.pipeline.aggregate import Aggregator
from wrapalert.pipeline.forward import Held, event_record
from wrapalert.sinks import journald, syslog
from wrapalert.sinks.alertmanager import build_alerts

NOW = 1_700_000_000.0
MARK = "source address not verified"


def parts(d: Digest) -> tuple[str, str]:
    msg = Renderer("wrapalert@localhost", ("root",)).render(d)
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None
    assert html is not None
    return plain.get_content(), html.get_content()


def test_groups_count_their_events_by_transport_and_keep_them() -> None:
    """A group's report says how many of its new events each transport had; the counts
    start afresh after a report and survive export/restore and the outbox's JSON."""
    agg = Aggregator(config.DigestConfig(), 100)
    for transport in ("tcp", "tcp", "udp"):
        event = Event({"daemon": "sshd", "client_addr": "203.0.113.7"}, NOW, 0, None, True)
        event.transport = transport
        agg.add(event, NOW)
    again = Aggregator(config.DigestConfig(), 100)
    again.restore(agg.export_all())
    (report,) = again.collect(NOW, force=True)
    assert report.transports == (("tcp", 2), ("udp", 1))
    d = Digest(host="web1", created=NOW, groups=(report,))
    assert digest_from_json(digest_to_json(d)).groups[0].transports == report.transports
    event = Event({"daemon": "sshd", "client_addr": "203.0.113.7"}, NOW + 1, 0, None, True)
    again.add(event, NOW + 1)
    (later,) = again.collect(NOW + 1, force=True)
    assert later.transports == (("unknown", 1),)


def test_the_marker_says_what_was_not_verified() -> None:
    """All udp, all unknown, or a share of them; nothing for vouched rows or for reports
    made before transports were counted."""
    by = {g.addrs[0][0]: g for g in preview_digest(
        "d=in.tftpd a=203.0.113.66 transport=udp\n"
        "d=sshd a=203.0.113.67 transport=unknown\n"
        "d=sshd a=203.0.113.68 count=3\nd=in.tftpd a=203.0.113.68 transport=udp count=2\n"
        "d=sshd a=203.0.113.69\n"
    ).groups}  # fmt: skip
    assert unverified([by["203.0.113.66"]]) == "udp: source address not verified"
    assert unverified([by["203.0.113.67"]]) == "source address not verified"
    mixed = "d=sshd a=203.0.113.68 count=3\nd=in.tftpd a=203.0.113.68 transport=udp count=2"
    both = list(preview_digest(mixed).groups)  # two groups (daemons), one row
    assert unverified(both) == "source address not verified for 2 of 5 (udp 2)"
    assert unverified([by["203.0.113.69"]]) == ""
    assert unverified(list(one_group().groups)) == ""  # made before transports were counted


def test_digests_mark_unverified_rows_quietly_in_text_and_html() -> None:
    """A forged-looking row carries one grey line under it, and the footer explains it once;
    a digest of vouched refusals has neither."""
    text, html = parts(
        preview_digest("d=in.tftpd a=203.0.113.66 transport=udp\nd=sshd a=203.0.113.9")
    )
    row = next(i for i, line in enumerate(text.splitlines()) if line.startswith("203.0.113.66"))
    assert text.splitlines()[row + 1].strip() == "udp: source address not verified"
    assert text.count(MARK) == 1
    assert "Not verified = no completed TCP handshake" in text
    assert MARK in html
    assert "not verified</strong> = no completed TCP handshake" in html
    clean_text, clean_html = parts(preview_digest("d=sshd a=203.0.113.9"))
    assert "verified" not in clean_text
    assert "verified" not in clean_html
    assert not context(preview_digest("d=sshd a=203.0.113.9"))["unverified"]


def test_records_carry_the_daemons_finding() -> None:
    """jsonl and webhook records, syslog's line (right after who reported it, so a long
    value never cuts it off) and journald's WRAPALERT_TRANSPORT field all say it."""
    record = event_record(
        event("in.tftpd", "203.0.113.66", at=NOW, transport="udp", verdict="deny")
    )
    assert record["transport"] == "udp"
    assert json.loads(json.dumps(record))["transport"] == "udp"
    line = syslog.message_text(record)
    assert line.startswith("refused verdict=deny trusted=true uid=0 transport=udp daemon=")
    assert b"\nWRAPALERT_TRANSPORT=udp\n" in journald.entry(record)


def test_alertmanager_labels_the_transport_and_says_it_in_the_summary() -> None:
    """The refusal alert has a `transport` label; a udp or unknown one's summary says the
    address is not verified, a tcp one's does not."""
    alerts = build_alerts(
        [
            event_record(
                event("in.tftpd", "203.0.113.66", at=NOW, transport="udp", verdict="deny")
            ),
            event_record(
                event("in.tftpd", "203.0.113.66", at=NOW, transport="tcp", verdict="deny")
            ),
        ],
        host="web1",
        static={},
        resolve_after=900.0,
        now=NOW,
    )
    by = {a["labels"]["transport"]: a for a in alerts}  # type: ignore[index]
    assert set(by) == {"udp", "tcp"}
    assert "not verified: udp" in str(by["udp"]["annotations"])
    assert "not verified" not in str(by["tcp"]["annotations"])


def test_held_records_count_their_unverified_events() -> None:
    """Trusted events held back by the rate limit say how many had no vouched source."""
    held = Held(trusted=True)
    for transport in ("tcp", "udp", "unknown"):
        held.add(NOW, "sshd", "203.0.113.7", transport)
    record = held.release()
    assert (record["events"], record["unverified"]) == (3, 2)
    assert held.release()["unverified"] == 0
