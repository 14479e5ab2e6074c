"""Each story of the lead block, from refusals reported through the real client to the
running daemon, read where root reads it: the first 24 lines of the mail in the Maildir."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import (
    Deliveries,
    Running,
    body,
    chromium,
    client,
    elements,
    maildir_messages,
    make_config,
    require,
    send_refusals,
)
from timing import VirtualClock, run

from wrapalert import config
from wrapalert.daemon.server import Server
from wrapalert.mail import Renderer
from wrapalert.match import Matcher
from wrapalert.model import Digest
from wrapalert.sinks.base import DIGESTS, Built

SCREEN = 24  # lines of an 80-column terminal: what root sees before scrolling
Refusal = tuple[str, str]  # (daemon, client address)
NOBODY = 65534


@dataclass
class Outcome:
    """What a scenario left: every mail, the last one's first screen, the daemon's status."""

    mails: list[EmailMessage]
    status: dict[str, object]

    @property
    def last(self) -> EmailMessage:
        return self.mails[-1]

    @property
    def screen(self) -> list[str]:
        return body(self.last).splitlines()[:SCREEN]


def story_config(sockdir: Path, **story: int) -> config.Config:
    """Timers long enough that everything sent lands in the digest flushed at the stop; a
    short host name of its own (the subject is cut at 78 characters, the system's name
    could cut the story the tests read at its end)."""
    cfg = make_config(sockdir, group_wait=60.0, group_interval=600.0)
    daemon = replace(cfg.daemon, hostname="web1")
    return replace(cfg, daemon=daemon, story=replace(config.StoryConfig(), **story))


def through_daemon(
    cfg: config.Config,
    refusals: Sequence[Refusal],
    *,
    before: Sequence[Refusal] = (),
    untrusted: Sequence[Refusal] = (),
    silence: Sequence[str] = (),
) -> Outcome:
    """Run the daemon; report `before` and flush it as a first digest; add a silence; then
    report `refusals` (and `untrusted` as uid 65534) through the real client and stop."""

    async def scenario() -> dict[str, object]:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        sock = f"socket={cfg.daemon.socket}"
        async with Running(server):
            for daemon, addr in before:
                await asyncio.to_thread(client, f"d={daemon}", f"a={addr}", sock)
            if before:
                await flush_when_ingested(server, len(before))
                await seen.wait_events(len(before))
            if silence:
                server.silences.add(tuple(Matcher.parse(m) for m in silence), 3600)
            for daemon, addr in refusals:
                await asyncio.to_thread(client, f"d={daemon}", f"a={addr}", sock)
            for daemon, addr in untrusted:
                await asyncio.to_thread(client, f"d={daemon}", f"a={addr}", sock, user=NOBODY)
        return server.status()

    status = asyncio.run(scenario())
    return Outcome(maildir_messages(cfg.daemon.state_dir.parent / "Maildir"), status)


async def flush_when_ingested(server: Server, count: int) -> None:
    """Flush once the daemon holds `count` events: the client returns when its datagram is
    queued, which can be before the daemon has read it (nothing signals that moment)."""
    flushed = 0
    async with asyncio.timeout(10):
        while (flushed := flushed + server.flush()) < count:  # noqa: ASYNC110 - no event marks ingestion
            await asyncio.sleep(0.01)


def lead(outcome: Outcome, kind: str) -> list[str]:
    """The lead block's lines of one kind, in the first screen."""
    return [line for line in outcome.screen if line.startswith(f"{kind.upper():<12}")]


SCAN = [(d, "192.0.2.9") for d in ("sshd", "in.ftpd", "in.telnetd", "rpcbind", "in.fingerd")]
SWEEP = [("sshd", f"198.51.100.{i}") for i in range(10, 26)]  # 16: `[scan] sources`
PROBES = [("in.fingerd", "203.0.113.31"), ("rpcbind", "203.0.113.47"), ("sshd", "192.0.2.66")]


def test_scan_story_names_the_address_and_its_daemons(sockdir: Path) -> None:
    """One address refused by five daemons is the scan story, in the subject and the first
    screen, with the command that silences it; headers and status agree."""
    out = through_daemon(story_config(sockdir), SCAN)
    assert lead(out, "scan") == [
        "SCAN        192.0.2.9 tried 5 daemons, 5 refused: in.fingerd, in.ftpd, …"
    ]
    assert "            wrapalert silence add --for 2h client=192.0.2.9" in out.screen
    host = out.last["X-Wrapalert-Host"]
    assert out.last["Subject"] == (
        f"[wrapalert] {host}: scan from 192.0.2.9 (5 daemons); 5 refused, 1 source"
    )
    assert out.last["X-Wrapalert-Scans"] == str(out.status["scans"]) == "1"
    assert out.last["X-Wrapalert-Severity"] == "critical"


def test_sweep_story_names_the_network_and_its_address_count(sockdir: Path) -> None:
    """Sixteen addresses of one /24 are the sweep story, and one row of the sources table."""
    out = through_daemon(story_config(sockdir), SWEEP)
    assert lead(out, "sweep") == ["SWEEP       198.51.100.0/24: 16 addresses, 16 refused: sshd"]
    rows = [line for line in out.screen if line.startswith("198.51.100.")]
    assert len(rows) == 1
    assert rows[0].startswith("198.51.100.0/24 16 addresses     16 ")
    assert out.last["Subject"].endswith(": sweep of 198.51.100.0/24 (16 addresses); 16 refused")


def test_brute_force_story_follows_the_configured_threshold(sockdir: Path) -> None:
    """`[story] brute_force = 12`: twelve refusals of one address by sshd are a brute force,
    eleven of another are not."""
    hammer = [("sshd", "203.0.113.5")] * 12 + [("sshd", "203.0.113.99")] * 11
    out = through_daemon(story_config(sockdir, brute_force=12), hammer)
    assert lead(out, "brute force") == ["BRUTE FORCE 203.0.113.5 on sshd: 12 refused"]
    assert "            wrapalert silence add --for 2h daemon=sshd client=203.0.113.5" in out.screen
    assert out.last["Subject"].endswith(
        ": brute force from 203.0.113.5 on sshd (12 tries); 23 refused"
    )


def test_repeat_story_names_an_address_reported_before(sockdir: Path) -> None:
    """An address already in an earlier digest that comes back is a repeat offender."""
    again = [("sshd", "192.0.2.50")]
    out = through_daemon(story_config(sockdir), again * 2, before=again)
    assert len(out.mails) == 2
    assert lead(out, "repeat") == ["REPEAT      192.0.2.50 repeat, 2 refused: sshd"]
    assert out.last["Subject"].endswith(
        ": repeat offender 192.0.2.50 (2 tries); 2 refused, 1 source"
    )


def test_probes_story_counts_one_off_addresses_with_their_daemons(sockdir: Path) -> None:
    """Three new addresses refused once each are one probes line, with their daemons."""
    out = through_daemon(story_config(sockdir), PROBES)
    assert lead(out, "probes") == [
        "PROBES      3 other new addresses, 3 refused: in.fingerd, rpcbind, sshd"
    ]


def test_silenced_story_counts_what_a_silence_kept_out(sockdir: Path) -> None:
    """Refusals matched by a silence are counted in the lead block, with the command that
    lists the silences, and are not rows."""
    muted = [("sshd", "192.0.2.77")] * 2
    out = through_daemon(
        story_config(sockdir), [*muted, ("sshd", "192.0.2.1")], silence=["client=192.0.2.77"]
    )
    assert lead(out, "silenced") == [
        "SILENCED    2 events silenced since the last digest, not listed"
    ]
    assert "            wrapalert silence list" in out.screen
    assert not [line for line in out.screen if line.startswith("192.0.2.77")]


def test_held_story_counts_what_the_mail_cap_held_back(sockdir: Path) -> None:
    """With mails_per_hour = 1, the second digest waits for the hour; when it goes, the lead
    block says how many of its events were held back (daemon on virtual time)."""
    cfg = make_config(sockdir, group_wait=1.0, group_interval=60.0, batch_window=0.0)
    cfg = replace(cfg, limits=replace(cfg.limits, mails_per_hour=1, retry_min=1.0))
    # Periodic chores at their usual pace: each tick is a loop pass, an hour is many passes.
    cfg = replace(cfg, daemon=replace(cfg.daemon, commit_interval=1.0, spool_scan_interval=60.0))
    clock = VirtualClock()
    got: list[Digest] = []

    class Mailbox:
        name = "mail"

        async def send(self, digest: Digest) -> None:
            got.append(digest)

    async def scenario() -> None:
        async with Running(Server(cfg, sinks=[Built(Mailbox(), DIGESTS)], clock=clock)):
            for i in range(3):  # a new source every ten minutes
                send_refusals(cfg.daemon.socket, f"192.0.2.{i + 1}")
                await asyncio.sleep(600)
            await asyncio.sleep(3600)

    run(scenario())
    assert [d.held for d in got] == [0, 2]
    msg = Renderer("wrapalert@localhost", ("root",)).render(got[1])
    screen = body(msg).splitlines()[:SCREEN]
    assert (
        "HELD        2 events held back by the rate limit, sent late (2 digests merged)" in screen
    )


def mixed(sockdir: Path) -> Outcome:
    """Every kind at once: a repeat offender, a brute force, a scan, a sweep, probes, an
    untrusted flood and a silence."""
    require(os.geteuid() == 0, "sending as another uid needs root (setpriv)")
    again = [("sshd", "192.0.2.50")]
    refusals = [
        *again,
        *[("sshd", "203.0.113.5")] * 12,
        *SCAN,
        *SWEEP,
        *PROBES,
        ("sshd", "192.0.2.77"),
    ]
    untrusted = [("sshd", f"10.9.9.{i}") for i in range(3)]
    return through_daemon(
        story_config(sockdir, brute_force=12),
        refusals,
        before=again,
        untrusted=untrusted,
        silence=["client=192.0.2.77"],
    )


@pytest.mark.system
def test_mixed_digest_tells_every_story_on_the_first_screen(sockdir: Path) -> None:
    """With every kind at once, the first 24 lines of 80 columns hold the whole lead block,
    most severe first, and the top of the sources table."""
    out = mixed(sockdir)
    screen = out.screen
    assert [line for line in screen if len(line) > 80] == []
    kinds = ["scan", "sweep", "brute force", "repeat", "probes", "untrusted", "silenced"]
    told = [line[:12].strip().lower() for line in screen if re.match(r"[A-Z]{4}", line)]
    assert told == kinds
    assert lead(out, "untrusted") == ["UNTRUSTED   3 untrusted reports from uid 65534, see below"]
    table = screen.index("Sources")
    assert screen[table + 2].startswith("address ")
    assert len(screen) > table + 4  # the header and at least two rows
    assert out.last["Subject"].endswith(": scan from 192.0.2.9 (5 daemons); 37 refused, 22 sources")


@pytest.mark.system
def test_mixed_digest_html_shows_every_story_in_chromium(sockdir: Path, tmp_path: Path) -> None:
    """Chromium's DOM of the mixed digest's HTML part holds every story line of the text."""
    out = mixed(sockdir)
    html = out.last.get_body(("html",))
    assert html is not None
    dom = chromium(tmp_path, html.get_content(), "--dump-dom")
    shown = " ".join("".join(elements(dom.stdout.decode("utf-8")).text).split())
    lines = [line[12:] for line in out.screen if re.match(r"[A-Z]{4}", line)]
    assert len(lines) == 7
    for line in lines:
        assert line.removesuffix("…") in shown


@pytest.mark.system
def test_untrusted_flood_is_counted_apart_and_never_quoted_first(sockdir: Path) -> None:
    """A flood from uid 65534 next to one real refusal: subject, headline and Daemons line
    name only the real one; X-Wrapalert-Untrusted counts the flood; no untrusted text comes
    before the marker line; Events plus Untrusted over all mails is what was accepted."""
    require(os.geteuid() == 0, "sending as another uid needs root (setpriv)")
    flood = [("CRITICAL:root-compromise", f"10.66.{i}.1") for i in range(40)]
    out = through_daemon(story_config(sockdir), [("sshd", "192.0.2.1")], untrusted=flood)
    msg, text = out.last, body(out.last)
    assert "CRITICAL" not in msg["Subject"]
    assert msg["Subject"].endswith(": 1 refused from 1 source (1 new, 40 untrusted): sshd")
    assert text.startswith(f"wrapalert on {msg['X-Wrapalert-Host']}: 1 refused connection ")
    assert "Daemons: sshd 1" in text.splitlines()
    assert (msg["X-Wrapalert-Events"], msg["X-Wrapalert-Sources"]) == ("1", "1")
    assert msg["X-Wrapalert-Untrusted"] == "40"
    marker = "UNTRUSTED   40 untrusted reports from uid 65534, see below"
    before_marker = text.split(marker, 1)[0]
    assert "CRITICAL" not in before_marker
    assert "10.66." not in before_marker
    html_before = body(msg, "html").split("40 untrusted reports from uid 65534, see below", 1)
    assert len(html_before) == 2
    assert "CRITICAL" not in html_before[0]
    assert "10.66." not in html_before[0]
    reported = sum(
        int(m["X-Wrapalert-Events"]) + int(m["X-Wrapalert-Untrusted"]) for m in out.mails
    )
    status = out.status
    assert status["pending_events"] == 0
    assert reported == status["received"] == 41
