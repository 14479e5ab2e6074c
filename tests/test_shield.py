"""What is never banned while the daemon runs: this host's addresses (rtnetlink, /proc)
and the peers of logged-in sessions (logind's files, utmp), read at each decision.

The parsers get real bytes: the kernel's own netlink answer, a session file as
systemd 257 (Debian 13) wrote it, utmp records written by util-linux's
utmpdump (glibc's struct utmp), checked against `who --ips` where it exists.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LOGIND_SESSION, require, utmp_file
from nftns import Netns, require_netns

from wrapalert import hostaddr, sessions
from wrapalert.shield import Protected, Shield

# The same logind's record of a local (non-remote) session: no REMOTE_HOST.
LOGIND_LOCAL = """\
# This is private data. Do not parse.
UID=0
USER=root
ACTIVE=1
STATE=active
REMOTE=0
TYPE=unspecified
CLASS=manager-early
SERVICE=systemd-user
LEADER=83
"""


# -- the host's own addresses ----------------------------------------------------------


def dump_bytes() -> list[bytes]:
    """The kernel's raw answer to our RTM_GETADDR dump request."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2)
        sock.bind((0, 0))
        sock.send(hostaddr.request())
        chunks = []
        while True:
            data = sock.recv(65536)
            chunks.append(data)
            if hostaddr.parse_dump(data)[1]:
                return chunks


def ip_addresses(ns: Netns | None = None) -> set[str]:
    argv = ("ip", "-j", "addr")
    out = (
        ns.run(*argv).stdout
        if ns
        else subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    )
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


@pytest.mark.system
def test_netlink_dump_parses_the_kernels_answer() -> None:
    """The real kernel's RTM_GETADDR answer parses to the addresses `ip addr` shows."""
    require(shutil.which("ip") is not None, "ip is missing (apt-get install iproute2)")
    found = [a for chunk in dump_bytes() for a in hostaddr.parse_dump(chunk)[0]]
    assert set(found) == ip_addresses()
    assert "127.0.0.1" in found


def test_netlink_error_and_truncation() -> None:
    """An NLMSG_ERROR answer is an OSError; a truncated datagram yields what came before."""
    error = (
        hostaddr.NLMSG.pack(36, hostaddr.NLMSG_ERROR, 0, 1, 0)
        + (-1).to_bytes(4, "little", signed=True)
        + bytes(16)
    )
    with pytest.raises(OSError, match="refused"):
        hostaddr.parse_dump(error)
    chunk = dump_bytes()[0]
    whole, _ = hostaddr.parse_dump(chunk)
    cut, done = hostaddr.parse_dump(chunk[: len(chunk) - 3])
    assert not done
    assert cut == whole[: len(cut)]


def test_proc_fallback_reads_local_routes_and_ipv6() -> None:
    """/proc/self/net's fib_trie (local routes, a whole local /24 included) and if_inet6
    give this namespace's addresses."""
    fib = (
        "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.5\n        /32 host LOCAL\n"
        "     |-- 10.0.0.255\n        /32 link BROADCAST\n"
        "     |-- 203.0.113.0\n        /24 link UNICAST\n        /24 host LOCAL\n"
    )
    inet6 = "20010db8000000000000000000000001 02 40 00 80     eth0\n"
    assert hostaddr.parse_proc(fib, inet6) == ["10.0.0.5/32", "203.0.113.0/24", "2001:db8::1"]
    assert "127.0.0.1/32" in hostaddr.proc_addresses()


@pytest.fixture
def ns() -> Iterator[Netns]:
    require_netns()
    holder = Netns()
    yield holder
    holder.close()


@pytest.mark.system
def test_an_address_added_later_is_seen_at_the_next_read(ns: Netns) -> None:
    """Read in a namespace, an address added after a first read is there at the next."""
    probe = "from wrapalert import hostaddr; print(' '.join(hostaddr.own_addresses()))"
    python = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python")
    python = python if Path(python).exists() else shutil.which("python3") or "python3"
    before = ns.run(python, "-c", probe).stdout.split()
    assert "198.51.100.77" not in before
    ns.run("ip", "addr", "add", "198.51.100.77/32", "dev", "lo")
    ns.run("ip", "-6", "addr", "add", "2001:db8:77::1/64", "dev", "lo", "nodad")
    after = ns.run(python, "-c", probe).stdout.split()
    assert {"198.51.100.77", "2001:db8:77::1"} <= set(after)


# -- logged-in sessions --------------------------------------------------------------------


def test_logind_session_file_gives_its_peer() -> None:
    """A remote session's file names its peer; a local one names none."""
    peer = sessions.parse_session("c2", LOGIND_SESSION)
    assert peer == sessions.Peer("203.0.113.50", "root via sshd (session c2)")
    assert sessions.parse_session("c3", LOGIND_LOCAL) is None
    named = LOGIND_SESSION.replace("203.0.113.50", "admin.example.org")
    assert sessions.parse_session("c4", named) is None  # a name: no DNS in a decision
    mapped = LOGIND_SESSION.replace("203.0.113.50", "::ffff:203.0.113.50")
    assert sessions.parse_session("c5", mapped) == peer.__class__(
        "203.0.113.50", peer.who.replace("c2", "c5")
    )


def test_logind_directory_skips_fifos_and_unreadable_entries(tmp_path: Path) -> None:
    """Session records are read; the .ref FIFOs beside them and directories are not."""
    (tmp_path / "c2").write_text(LOGIND_SESSION)
    (tmp_path / "c3").write_text(LOGIND_LOCAL)
    (tmp_path / "c2.ref").write_text("")
    (tmp_path / "odd").mkdir()
    assert [p.addr for p in sessions.logind_peers(tmp_path)] == ["203.0.113.50"]
    assert sessions.logind_peers(tmp_path / "absent") == []


@pytest.mark.system
def test_utmp_records_give_their_peers(tmp_path: Path) -> None:
    """USER_PROCESS records give their addresses (IPv4 and IPv6, and a mapped host field
    as IPv4); dead processes and host names are skipped; `who --ips` agrees."""
    path = utmp_file(tmp_path)
    peers = sessions.utmp_peers(path)
    assert [(p.addr, p.who) for p in peers] == [
        ("203.0.113.51", "root on pts/1 (utmp, pid 12345)"),
        ("2001:db8::7", "alice on pts/2 (utmp, pid 12346)"),
        ("198.51.100.2", "dave on pts/5 (utmp, pid 12349)"),
    ]
    who = subprocess.run(["who", "--ips", str(path)], capture_output=True, text=True, check=False)
    if who.returncode == 0:  # coreutils 9.7 (Debian 13) no longer has --ips
        shown = {line.split()[-1] for line in who.stdout.splitlines()}
        assert {"203.0.113.51", "2001:db8::7"} <= shown
    assert sessions.utmp_peers(tmp_path / "absent") == []
    assert sessions.parse_utmp(path.read_bytes()[:-10]) == peers[:2]  # a torn last record


# -- the shield ----------------------------------------------------------------------------


def shield(tmp_path: Path, addresses: tuple[str, ...] = ()) -> Shield:
    return Shield(lambda: addresses, tmp_path / "sessions", tmp_path / "utmp")


@pytest.mark.system
def test_shield_refuses_own_addresses_and_session_peers(tmp_path: Path) -> None:
    """A target holding this host's address is "allowlisted"; one holding a session's
    peer is "session"; anything else is free."""
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "c2").write_text(LOGIND_SESSION)
    utmp_file(tmp_path)
    guard = shield(tmp_path, ("192.0.2.10", "2001:db8:5::1"))
    assert guard.check("192.0.2.10") == Protected("allowlisted", "this host's address 192.0.2.10")
    assert guard.check("2001:db8:5::/64") is not None  # the host's /64
    hit = guard.check("203.0.113.50")
    assert hit is not None
    assert hit.why == "session"
    assert "root via sshd" in hit.detail
    assert guard.check("203.0.113.51") == Protected(
        "session", "logged in from 203.0.113.51: root on pts/1 (utmp, pid 12345)"
    )
    assert guard.check("2001:db8::/64") is not None  # alice's IPv6 peer is in it
    assert guard.check("203.0.113.52") is None


def test_shield_reads_afresh_at_each_check(tmp_path: Path) -> None:
    """A session that starts after a first check protects its peer at the next one, and
    no longer once it ends."""
    (tmp_path / "sessions").mkdir()
    guard = shield(tmp_path)
    assert guard.check("203.0.113.50") is None
    (tmp_path / "sessions" / "c2").write_text(LOGIND_SESSION)
    assert guard.check("203.0.113.50") is not None
    (tmp_path / "sessions" / "c2").unlink()
    assert guard.check("203.0.113.50") is None
