"""Bans that never break the host, never lock anyone out and never go quietly off: the
daemon against the real kernel in private network namespaces (tests/nftns.py).

A second namespace joined by a veth pair plays the remote hosts; reports come
through the real client; the kernel's sets are read with nft's own listing.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LOGIND_SESSION, PYTHON, maildir_messages, require, utmp_file, wait_until
from nftns import (
    HOST4,
    HOST6,
    NEIGHBOUR4,
    PEER4,
    TABLE,
    UDP_ASK,
    UDP_ECHO,
    Daemons,
    Netns,
    Session,
    connect,
    elements,
    link,
    listen,
    require_netns,
    tables,
)

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
    """A second namespace joined to the host by a veth pair: remote hosts."""
    ns = Netns()
    link(host, ns)
    yield ns
    ns.close()


@pytest.fixture
def daemon(host: Netns, sockdir: Path) -> Iterator[Daemons]:
    started = Daemons(sockdir, host)
    yield started
    started.close()


def mail_text(maildir: Path) -> str:
    """The plain text of every digest delivered so far."""
    parts = [m.get_body(("plain",)) for m in maildir_messages(maildir)]
    return "\n".join(p.get_content() for p in parts if p is not None)


def owner_pid(ns: Netns, table: str = TABLE) -> int | None:
    """The pid the table's owner marker names."""
    out = json.loads(ns.run("nft", "-j", "list", "chain", "inet", table, "input").stdout)
    for item in out["nftables"]:
        comment = item.get("rule", {}).get("comment", "")
        if comment.startswith("wrapalert owner pid="):
            return int(comment.split()[2].partition("=")[2])
    return None


# -- 2: a ban never breaks the host's own traffic -------------------------------------------


def test_a_ban_never_breaks_the_hosts_own_traffic(daemon: Daemons, peer: Netns) -> None:
    """With the peer's address banned: the host's connection to it (opened before) still
    gets its replies, a new one from the host connects, a UDP query from the host gets
    its answer (a resolver, a gateway), and a session the host accepted from it before
    the ban goes on; only a new connection from the banned address is dropped."""
    d = daemon()
    servers = [
        listen(d.ns, HOST4, 8022),
        listen(peer, PEER4, 8023),
        serve(peer, UDP_ECHO, PEER4, "5353"),
    ]
    outgoing = Session(d.ns, HOST4, PEER4, 8023)
    incoming = Session(peer, PEER4, HOST4, 8022)
    try:
        assert (outgoing.greeting, incoming.greeting) == ("hello", "hello")
        d.report(PEER4)
        wait_until(lambda: PEER4 in elements(d.ns), 10, "the ban")
        assert connect(peer, PEER4, HOST4, 8022) == "TimeoutError"  # new, from the source
        assert connect(peer, NEIGHBOUR4, HOST4, 8022).startswith("connected")
        assert outgoing.say("still there?") == "still there?"  # replies to the host's own
        assert incoming.say("and here?") == "and here?"  # accepted before the ban
        assert connect(d.ns, HOST4, PEER4, 8023) == "connected hello"  # the host's new one
        answer = d.ns.run(PYTHON, "-c", UDP_ASK, HOST4, PEER4, "5353").stdout.strip()
        assert answer == "query"
    finally:
        for proc in (outgoing, incoming):
            proc.close()
        for server in servers:
            server.kill()
            server.wait()


def serve(ns: Netns, script: str, *args: str) -> subprocess.Popen[str]:
    proc = ns.popen(PYTHON, "-c", script, *args)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


# -- 3: no lock-outs ---------------------------------------------------------------------------


def test_a_nat64_source_is_banned_alone(daemon: Daemons, peer: Netns) -> None:
    """A NAT64 source is banned as its one address: another IPv4 client translated by the
    same gateway still connects (a /64 ban would hold every translated client); Teredo
    and 6to4 sources are single addresses in the kernel too."""
    d = daemon()
    for last in ("a09:2", "a09:3"):
        peer.run("ip", "-6", "addr", "add", f"64:ff9b::{last}/96", "dev", "wa1", "nodad")
    d.ns.run("ip", "-6", "route", "add", "64:ff9b::/96", "dev", "wa0")
    server = listen(d.ns, HOST6, 8022)
    try:
        wait_until(
            lambda: connect(peer, "64:ff9b::a09:3", HOST6, 8022).startswith("connected"),
            10,
            "the route",
        )
        d.report("64:ff9b::10.9.0.2")
        wait_until(lambda: "64:ff9b::a09:2/128" in elements(d.ns), 10, "the ban")
        assert elements(d.ns)["64:ff9b::a09:2/128"]["set"] == "ban6host"
        assert connect(peer, "64:ff9b::a09:2", HOST6, 8022) == "TimeoutError"
        assert connect(peer, "64:ff9b::a09:3", HOST6, 8022).startswith("connected")
    finally:
        server.kill()
        server.wait()
    d.report("2001:0:4136:e378:8000:63bf:3fff:fdd2")  # Teredo
    d.report("2002:cb00:7107::1")  # 6to4
    wait_until(lambda: len(elements(d.ns)) == 3, 10, "the bans")
    assert set(elements(d.ns)) == {
        "64:ff9b::a09:2/128",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2/128",
        "2002:cb00:7107::1/128",
    }


def test_a_mapped_allow_entry_protects_the_ipv4_source(daemon: Daemons) -> None:
    """allow = ["::ffff:a.b.c.d"], how sshd prints a dual-stack peer, keeps a.b.c.d from a
    ban (it was accepted and ignored); check-config shows it as IPv4."""
    d = daemon('allow = ["::ffff:198.51.100.9"]')
    d.report("198.51.100.9")
    wait_until(lambda: d.status()["bans"]["refused"].get("allowlisted") == 1, 10, "refusal")
    assert elements(d.ns) == {}
    assert "never bans 198.51.100.9/32" in d.cli("check-config").stdout


def test_an_address_added_after_start_is_never_banned(daemon: Daemons) -> None:
    """An address the host gains while the daemon runs is refused a ban from then on
    (automatic or by hand), not only those it had at start."""
    d = daemon()
    d.ns.run("ip", "addr", "add", "198.51.100.77/32", "dev", "lo")
    d.report("198.51.100.77")
    wait_until(lambda: d.status()["bans"]["refused"].get("allowlisted") == 1, 10, "refusal")
    assert elements(d.ns) == {}
    done = d.ban("add", "198.51.100.77")
    assert done.returncode == 1
    assert "this host's address 198.51.100.77" in done.stderr


def test_a_logged_in_sessions_peer_is_never_banned(daemon: Daemons, tmp_path: Path) -> None:
    """The peer of a logind session or a utmp record (files seen through bind mounts at
    their real paths, in the daemon's private mount namespace, written after it started)
    is refused a ban, counted as "session" and told in the digest; `ban add` refuses it
    unless --force."""
    require(Path("/bin/sh").exists(), "/bin/sh is missing")
    sessions_dir, utmp = tmp_path / "sessions", tmp_path / "utmp"
    sessions_dir.mkdir()
    utmp.write_bytes(b"")
    setup = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/sessions && "
        f"mount --bind {shlex.quote(str(sessions_dir))} /run/systemd/sessions && "
        f"touch /run/utmp && mount --bind {shlex.quote(str(utmp))} /run/utmp && "
        'exec "$@"'
    )
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", setup, "sh")
    d = daemon('ban_for = "1h"', group_wait="1s", prefix=prefix)
    (sessions_dir / "c2").write_text(LOGIND_SESSION)  # REMOTE_HOST=203.0.113.50
    d.report("203.0.113.50")
    wait_until(lambda: d.status()["bans"]["refused"].get("session") == 1, 10, "refusal")
    assert utmp_file(tmp_path) == utmp  # written in place: the bind mount shows it
    d.report("203.0.113.51")  # root on pts/1 in the utmp record
    wait_until(lambda: d.status()["bans"]["refused"].get("session") == 2, 10, "refusal")
    assert elements(d.ns) == {}
    done = d.ban("add", "203.0.113.50")
    assert done.returncode == 1
    assert "logged in from 203.0.113.50: root via sshd (session c2)" in done.stderr
    assert "--force" in done.stderr
    assert d.ban("add", "203.0.113.50", "--force").returncode == 0
    assert "203.0.113.50" in elements(d.ns)
    wait_until(lambda: "not banned" in mail_text(d.base / "Maildir"), 15, "the digest")
    told = "203.0.113.50 not banned: 3 refusals; session (logged in from 203.0.113.50: root"
    assert f"{told} via sshd (session c2))" in mail_text(d.base / "Maildir")


# -- 4: never silently off ------------------------------------------------------------------


def test_restart_and_reboot_keep_ipv6_bans_and_banning_on(daemon: Daemons) -> None:
    """IPv6 bans of every kind (an interval network, a /64, a /128) and an IPv4 one survive
    a restart with the table kept and a reboot with it gone; bans made afterwards, IPv4
    included, still reach the kernel (nft 1.0.6 failed the old re-sync for good)."""
    d = daemon('ban_for = "1h"')
    assert d.ban("add", "2001:db8::/32", "--force").returncode == 0
    d.report("fd00:7:1:2::5")
    d.report("64:ff9b::203.0.113.9")
    d.report("203.0.113.14")
    bans = {"2001:db8::/32", "fd00:7:1:2::/64", "64:ff9b::cb00:7109/128", "203.0.113.14"}
    wait_until(lambda: set(elements(d.ns)) == bans, 10, "the bans")
    for reboot, later, target in (
        (False, "203.0.113.15", "203.0.113.15"),
        (False, "fd00:7:2:3::9", "fd00:7:2:3::/64"),
        (True, "203.0.113.16", "203.0.113.16"),
        (True, "fd00:7:4:5::9", "fd00:7:4:5::/64"),
    ):
        assert d.proc.stop() == 0
        assert set(elements(d.ns)) == bans  # the table outlives the daemon
        if reboot:
            d.ns.run("nft", "flush", "ruleset")  # what a reboot leaves
        d.start()
        assert set(elements(d.ns)) == bans
        assert d.status()["bans"]["last_error"] is None
        d.report(later)
        bans.add(target)
        wait_until(lambda: set(elements(d.ns)) == bans, 10, "a ban after the restart")
        assert d.cli("status").returncode == 0


def test_a_flushed_ruleset_is_repaired_and_status_fails_meanwhile(daemon: Daemons) -> None:
    """After `nft flush ruleset` status exits 1 naming the missing bans, and that look
    repairs at once; an element added or deleted by hand is set right at the next look;
    every repair is counted in status and in the metrics file. (The reconcile is an hour
    away: only status looks, so nothing repairs before it asks.)"""
    prom = Path(daemon.base) / "wrapalert.prom"
    d = daemon('reconcile = "1h"', extra=f'[metrics]\ntextfile = "{prom}"\ninterval = "1s"\n')
    d.report("203.0.113.7")
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the ban")
    d.ns.run("nft", "flush", "ruleset")
    done = d.cli("status")
    assert done.returncode == 1
    assert "NOT IN THE KERNEL: 1 of 1 bans" in done.stdout
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the repair")
    assert d.cli("status").returncode == 0
    d.ns.run("nft", "add", "element", "inet", TABLE, "ban4", "{ 198.51.100.200 timeout 1h }")
    d.ns.run("nft", "delete", "element", "inet", TABLE, "ban4", "{ 203.0.113.7 }")
    assert d.cli("status").returncode == 1
    wait_until(lambda: set(elements(d.ns)) == {"203.0.113.7"}, 10, "the element repair")
    repairs = d.kernel()["repairs"]
    assert repairs == {"table": 1, "missing": 2, "extra": 1}, repairs
    wait_until(
        lambda: (
            prom.exists()
            and 'wrapalert_bans_kernel_repairs_total{reason="extra"} 1' in prom.read_text()
        ),
        10,
        "the metrics",
    )
    wait_until(lambda: "wrapalert_bans_unenforced 0" in prom.read_text(), 10, "enforced")
    assert "ban_kernel_repaired" in d.proc.log()


def test_the_reconcile_alone_repairs_a_flush_within_its_interval(daemon: Daemons) -> None:
    """Nobody asks: the reconcile repairs a flushed ruleset within its 2 s (and the time
    to look), and counts it."""
    d = daemon('reconcile = "2s"')
    d.report("203.0.113.7")
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the ban")
    d.ns.run("nft", "flush", "ruleset")
    start = time.monotonic()
    wait_until(lambda: "203.0.113.7" in elements(d.ns), 10, "the repair")
    assert time.monotonic() - start < 2 + 1.5
    repairs = d.kernel()["repairs"]
    assert repairs == {"table": 1, "missing": 1}, repairs


def test_a_new_table_takes_the_bans_and_the_old_one_goes(daemon: Daemons) -> None:
    """After `table` changes, at a restart and at a reload, the new table holds the bans
    and the one used before is deleted (it went on dropping traffic)."""
    d = daemon('table = "wa_one"\nban_for = "1h"')
    assert d.ban("add", "203.0.113.30").returncode == 0
    assert set(elements(d.ns, "wa_one")) == {"203.0.113.30"}
    assert d.proc.stop() == 0
    d.config.write_text(d.config.read_text().replace('"wa_one"', '"wa_two"'))
    d.start()
    wait_until(lambda: tables(d.ns) == ["wa_two"], 10, "the old table removed")
    assert set(elements(d.ns, "wa_two")) == {"203.0.113.30"}
    d.config.write_text(d.config.read_text().replace('"wa_two"', '"wa_three"'))
    d.proc.signal(signal.SIGHUP)
    d.proc.wait_for("READY=1")
    wait_until(lambda: tables(d.ns) == ["wa_three"], 10, "the reload's table")
    assert set(elements(d.ns, "wa_three")) == {"203.0.113.30"}
    assert d.ban("del", "203.0.113.30").returncode == 0
    assert elements(d.ns, "wa_three") == {}


def test_a_second_daemon_on_the_same_table_is_refused(daemon: Daemons) -> None:
    """A second wrapalert configured with a table another running one keeps exits at
    start saying so, touching nothing; once the first is gone (SIGKILL: a stale marker),
    the second takes the table over."""
    first = daemon('ban_for = "1h"')
    assert first.ban("add", "203.0.113.40").returncode == 0
    assert owner_pid(first.ns) == first.proc.proc.pid  # type: ignore[union-attr]
    second = daemon('ban_for = "1h"', start=False)
    second.start(wait=False)
    assert second.proc.proc is not None
    assert second.proc.proc.wait(timeout=30) == 1
    assert f"kept by another running wrapalert (pid {first.proc.proc.pid})" in second.proc.log()  # type: ignore[union-attr]
    assert set(elements(first.ns)) == {"203.0.113.40"}
    first.proc.kill()
    second.start()
    assert owner_pid(second.ns) == second.proc.proc.pid
    assert "ban_table_taken_over" in second.proc.log()


def test_without_the_capability_status_and_test_alert_fail_naming_the_drop_in(
    daemon: Daemons,
) -> None:
    """A daemon that may not change the firewall (no CAP_NET_ADMIN, as the packaged unit
    without its drop-in) records the ban, and says in status (exit 1), test-alert and the
    next digest that it is not enforced, naming the drop-in."""
    require(Path("/usr/bin/setpriv").exists(), "setpriv is missing (util-linux)")
    prefix = ("setpriv", "--bounding-set", "-net_admin")
    d = daemon(group_wait="1s", prefix=prefix, start=False)
    d.start(synced=False)
    d.report("203.0.113.60")
    wait_until(lambda: d.kernel().get("missing") == 1, 10, "the failed ban")
    done = d.cli("status")
    assert done.returncode == 1
    assert "NOT IN THE KERNEL: 1 of 1 bans" in done.stdout
    assert "wrapalert.service.d/nftables.conf" in done.stdout
    test = d.cli("test-alert")
    assert test.returncode == 1
    assert "nftables  failed: nft: Operation not permitted" in test.stdout
    wait_until(lambda: "NOT ENFORCED" in mail_text(d.base / "Maildir"), 15, "the digest")
    body = mail_text(d.base / "Maildir")
    assert "203.0.113.60 banned: 3 refusals" in body
    assert "NOT ENFORCED: 1 ban(s) not in the kernel" in body
    assert "wrapalert-nftables.conf" in body
