"""The nftables sink against the real kernel, in a private network namespace.

The daemon (`wrapalert run`) runs inside a namespace that a holder process
keeps alive, so the table can be inspected after the daemon stops; reports
come through the real client (and once through real libwrap and tcpd), each
for a real TCP connection from its address (tests/nftns.py, `Sources`: the
daemon bans only sources whose handshake the kernel saw), and the test reads
the kernel's sets with `nft -j` inside the namespace. Needs root, nftables
and unshare (CI has all three: a skip there is a failure).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PYTHON, WRAPALERT, maildir_messages, require, wait_until
from nftns import (
    HOST4,
    NEIGHBOUR4,
    PEER4,
    TABLE,
    Daemons,
    Netns,
    connect,
    elements,
    link,
    listen,
    require_netns,
)
from wrapped import Inetd, missing

from wrapalert import config
from wrapalert.cli import hosts_deny_line

pytestmark = pytest.mark.system


@pytest.fixture
def host() -> Iterator[Netns]:
    """The namespace the daemon runs in."""
    require_netns()
    ns = Netns()
    yield ns
    ns.close()


@pytest.fixture
def peer(host: Netns) -> Iterator[Netns]:
    """A second namespace joined to the host by a veth pair: a remote host."""
    ns = Netns()
    link(host, ns)
    yield ns
    ns.close()


@pytest.fixture
def daemon(host: Netns, sockdir: Path) -> Iterator[Daemons]:
    started = Daemons(sockdir, host)
    yield started
    started.close()


def test_past_threshold_the_source_is_in_the_set_with_a_timeout(
    daemon: Daemons,
) -> None:
    """Three trusted refusals put the source into the kernel set with ban_for as its timeout."""
    d = daemon('ban_for = "1h"')
    d.report("203.0.113.7", 2)
    assert elements(d.ns) == {}
    d.report("203.0.113.7", 1)
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the ban")
    assert elements(d.ns)["203.0.113.7"]["timeout"] == 3600
    bans = d.status()["bans"]
    assert (bans["active"], bans["added"]) == (1, 1)
    assert "ban_added" in d.proc.log()  # the daemon's log line, which journald keeps


def test_an_ipv6_source_is_banned_by_its_network(daemon: Daemons) -> None:
    """IPv6 refusals ban the source's /64 in the IPv6 set."""
    d = daemon()
    d.report("2001:db8:7:8::42")
    wait_until(lambda: "2001:db8:7:8::/64" in elements(d.ns), 10, "the ban")


def test_banned_address_is_dropped_while_another_connects(daemon: Daemons, peer: Netns) -> None:
    """A new TCP connection from the banned address times out; one from its neighbour on
    the same remote host connects; after `ban del` the address connects at once."""
    d = daemon()
    server = listen(d.ns, HOST4, 8022)
    try:
        assert connect(peer, NEIGHBOUR4, HOST4, 8022).startswith("connected")
        d.report(PEER4)
        wait_until(lambda: PEER4 in elements(d.ns), 10, "the ban")
        assert connect(peer, PEER4, HOST4, 8022) == "TimeoutError"
        assert connect(peer, NEIGHBOUR4, HOST4, 8022).startswith("connected")
        done = d.ban("del", PEER4)
        assert done.returncode == 0, done.stderr
        # `ban del` returned: the address is free at once, no waiting.
        assert connect(peer, PEER4, HOST4, 8022).startswith("connected")
    finally:
        server.kill()
        server.wait()


def test_ban_expires_in_the_kernel_and_in_the_books(daemon: Daemons) -> None:
    """With ban_for 2s the kernel drops the element and status counts one expiry."""
    d = daemon('ban_for = "2s"')
    d.report("203.0.113.8")
    wait_until(lambda: "203.0.113.8" in elements(d.ns), 10, "the ban")
    wait_until(lambda: "203.0.113.8" not in elements(d.ns), 10, "the kernel's expiry")
    wait_until(lambda: d.status()["bans"]["expired"] == 1, 10, "the book's expiry")
    assert d.status()["bans"]["active"] == 0


def test_untrusted_reports_never_ban(daemon: Daemons) -> None:
    """Reports sent as uid 65534 past the threshold ban nothing."""
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    d = daemon()
    d.report("203.0.113.9", 6, user=65534)
    assert d.status()["untrusted"] == 6
    time.sleep(0.5)  # a ban would reach the kernel within the batch interval
    assert elements(d.ns) == {}
    assert d.status()["bans"]["added"] == 0


def test_allowlisted_and_loopback_sources_are_refused(daemon: Daemons) -> None:
    """Configured allow networks and loopback are never banned; each refusal is counted."""
    d = daemon('allow = ["198.51.100.0/24"]')
    d.report("198.51.100.9")
    d.report("127.0.0.9")
    wait_until(lambda: d.status()["bans"]["refused"].get("allowlisted") == 2, 10, "refusals")
    assert elements(d.ns) == {}
    done = d.ban("add", "198.51.100.10")
    assert done.returncode == 1
    assert "allowlisted" in done.stderr


def test_dry_run_reports_and_touches_nothing(daemon: Daemons) -> None:
    """In dry-run the would-be ban is counted and listed, and no table is created."""
    d = daemon('mode = "dry-run"')
    d.report("203.0.113.10")
    wait_until(lambda: d.status()["bans"]["would_ban"] == 1, 10, "the decision")
    assert TABLE not in d.ns.run("nft", "list", "tables").stdout
    listed = json.loads(d.ban("list", "--json").stdout)
    assert [(b["target"], b["dry_run"]) for b in listed] == [("203.0.113.10", True)]


def test_max_bans_caps_the_set(daemon: Daemons) -> None:
    """With max_bans 2, a third source is refused and counted, not banned."""
    d = daemon("max_bans = 2")
    for addr in ("203.0.113.11", "203.0.113.12", "203.0.113.13"):
        d.report(addr)
    wait_until(lambda: d.status()["bans"]["refused"].get("cap") == 1, 10, "the cap")
    wait_until(lambda: len(elements(d.ns)) == 2, 10, "two bans")
    assert "203.0.113.13" not in elements(d.ns)


def test_restart_keeps_bans_and_state_consistent(daemon: Daemons) -> None:
    """The table outlives a stop; after an emptied ruleset a restart puts the ban back."""
    d = daemon('ban_for = "1h"')
    d.report("203.0.113.14")
    wait_until(lambda: "203.0.113.14" in elements(d.ns), 10, "the ban")
    assert d.proc.stop() == 0
    assert "203.0.113.14" in elements(d.ns)  # left in place, with its own expiry
    d.ns.run("nft", "flush", "ruleset")  # as a reboot would leave it
    assert elements(d.ns) == {}
    d.start()
    wait_until(lambda: "203.0.113.14" in elements(d.ns), 10, "the ban back")
    assert elements(d.ns)["203.0.113.14"]["timeout"] <= 3600
    listed = json.loads(d.ban("list", "--json").stdout)
    assert [b["target"] for b in listed] == ["203.0.113.14"]
    assert d.status()["bans"]["active"] == 1
    # The restart put the ban back; it made no new one. (The banned source itself can
    # no longer connect, so it makes no more refusals to count.)
    assert d.status()["bans"]["added"] == 1


def test_a_repeat_offenders_ban_grows_in_the_kernel_also_after_a_restart(
    daemon: Daemons,
) -> None:
    """ban_for 2s, ban_growth 2: the source's first ban is 2 s in the kernel, its second 4 s;
    after a restart (the history in the state database) its third is 8 s, and `ban list`
    says "3rd ban"."""
    d = daemon('ban_for = "2s"\nban_growth = 2')
    timeouts = []
    for restart in (False, False, True):
        if restart:
            assert d.proc.stop() == 0
            d.start()
        d.report("203.0.113.22")
        wait_until(lambda: "203.0.113.22" in elements(d.ns), 10, "the ban")
        timeouts.append(elements(d.ns)["203.0.113.22"]["timeout"])
        if len(timeouts) < 3:
            wait_until(lambda: "203.0.113.22" not in elements(d.ns), 15, "the kernel's expiry")
            wait_until(lambda: d.status()["bans"]["active"] == 0, 10, "the book's expiry")
    assert timeouts == [2, 4, 8]
    listed = d.ban("list").stdout
    assert "203.0.113.22" in listed
    assert "(3rd ban, 8 s)" in listed


def test_ban_add_list_and_flush_by_hand(daemon: Daemons) -> None:
    """`ban add --for 2h` bans at once with that timeout; `ban flush` empties both sets."""
    d = daemon()
    done = d.ban("add", "2001:db8:5::7", "--for", "2h")
    assert done.returncode == 0, done.stderr
    assert elements(d.ns)["2001:db8:5::/64"]["timeout"] == 7200
    assert "2001:db8:5::/64" in d.ban("list").stdout
    assert d.ban("flush").returncode == 0
    assert elements(d.ns) == {}
    assert d.status()["bans"]["lifted"] == 1


def test_ban_add_for_600_bans_for_600_seconds(daemon: Daemons) -> None:
    """Through the daemon and the kernel: `ban add --for 600` is a 600-second ban."""
    d = daemon()
    done = d.ban("add", "203.0.113.21", "--for", "600")
    assert done.returncode == 0, done.stderr
    assert elements(d.ns)["203.0.113.21"]["timeout"] == 600


def test_scan_across_daemons_bans_at_once(daemon: Daemons) -> None:
    """One address refused by three daemons is banned on the scan signal, below threshold."""
    d = daemon("threshold = 10")
    for name in ("sshd", "in.ftpd", "vsftpd"):
        d.report("203.0.113.15", 1, daemon=name)
    wait_until(lambda: "203.0.113.15" in elements(d.ns), 10, "the ban")
    listed = json.loads(d.ban("list", "--json").stdout)
    assert listed[0]["reason"].startswith("scan")


def test_ban_reaches_the_digest_through_real_libwrap(daemon: Daemons, sockdir: Path) -> None:
    """Refused TCP connections through real tcpd (under inetd, its libwrap running the
    default hosts.deny line) ban the source, and the digest says so."""
    reason = missing("inetd")
    require(reason is None, reason or "")
    d = daemon('ban_for = "1h"', group_wait="3s")
    service = Inetd(
        sockdir / "inetd", ["{port} stream tcp nowait root {tcpd} in.fingerd"], d.ns.pid
    )
    (sockdir / "inetd").mkdir()
    line = hosts_deny_line(config.load(d.config), PYTHON, daemons="in.fingerd", form="durable")
    service.set_deny(line)
    service.start()
    try:
        for _ in range(3):
            d.sources.connect("203.0.113.16", service.port)
        wait_until(lambda: "203.0.113.16" in elements(d.ns), 15, "the ban")
    finally:
        service.stop()
    assert d.status()["evidence"]["tcp"] == 3
    wait_until(lambda: maildir_messages(sockdir / "Maildir") != [], 15, "the digest")
    text = maildir_messages(sockdir / "Maildir")[0].get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "Banned" in content
    assert "203.0.113.16 banned: 3 refusals, until" in content
    assert "wrapalert ban del 203.0.113.16" in content


def test_ban_notes_wait_for_the_next_digest_across_a_restart(
    daemon: Daemons, sockdir: Path
) -> None:
    """A ban made by hand while nothing else is reported waits for the next digest in the
    state database: the first digest after a restart still tells it."""
    d = daemon('ban_for = "1h"')
    done = d.ban("add", "203.0.113.18")
    assert done.returncode == 0, done.stderr
    assert d.proc.stop() == 0
    assert maildir_messages(sockdir / "Maildir") == []  # no news at the stop: no digest
    d.start()
    d.report("198.51.100.9", 1)  # below the threshold: no ban of its own
    wait_until(lambda: maildir_messages(sockdir / "Maildir") != [], 15, "the digest")
    (msg,) = maildir_messages(sockdir / "Maildir")
    text = msg.get_body(("plain",))
    assert text is not None
    assert "203.0.113.18 banned: " in text.get_content()


def test_reload_keeps_bans_and_applies_the_new_threshold(daemon: Daemons) -> None:
    """After SIGHUP with threshold 5 the earlier ban stays, and 3 refusals no longer ban."""
    d = daemon()
    d.report("203.0.113.17")
    wait_until(lambda: "203.0.113.17" in elements(d.ns), 10, "the ban")
    d.config.write_text(d.config.read_text().replace("threshold = 3", "threshold = 5"))
    d.proc.signal(signal.SIGHUP)
    d.proc.wait_for("READY=1")
    assert "203.0.113.17" in elements(d.ns)
    assert [b["target"] for b in json.loads(d.ban("list", "--json").stdout)] == ["203.0.113.17"]
    d.report("203.0.113.18", 3)
    time.sleep(0.5)  # a ban would reach the kernel within the batch interval
    assert "203.0.113.18" not in elements(d.ns)
    d.report("203.0.113.18", 2)
    wait_until(lambda: "203.0.113.18" in elements(d.ns), 10, "the ban under the new rule")


def test_test_alert_checks_the_table(daemon: Daemons) -> None:
    """`wrapalert test-alert` says the nftables sink delivered once its table exists."""
    d = daemon()
    done = subprocess.run(
        [WRAPALERT, "test-alert", "-c", str(d.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nftables  delivered" in done.stdout
    d.ns.run("nft", "delete", "table", "inet", TABLE)
    done = subprocess.run(
        [WRAPALERT, "test-alert", "-c", str(d.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "nftables  failed" in done.stdout


def test_a_deleted_table_comes_back_with_the_next_ban(daemon: Daemons) -> None:
    """After someone deletes the table, the next ban re-creates it with every active ban."""
    d = daemon()
    d.report("203.0.113.19")
    wait_until(lambda: "203.0.113.19" in elements(d.ns), 10, "the first ban")
    d.ns.run("nft", "delete", "table", "inet", TABLE)
    d.report("203.0.113.20")
    wait_until(lambda: {"203.0.113.19", "203.0.113.20"} <= set(elements(d.ns)), 15, "both bans")
    assert d.status()["bans"]["last_error"] is None
