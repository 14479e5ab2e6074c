"""Forged sources never ban, tried as an attacker would; a real TCP attacker still is banned.

Real inetd runs tcpd-wrapped UDP services (in.tftpd, in.talkd, in.ntalkd: the kind of
datagram service libwrap guards) and one TCP service (in.fingerd) in the daemon's network
namespace, with the default hosts.deny line refusing every client, so each refusal runs
real logger and, when it fails, the real client, as root. libwrap takes a UDP client's
address from the datagram, so:

* from a second namespace, root forges IPv4 datagrams (a raw socket, IP_HDRINCL) and
  IPv6 ones (IPV6_TRANSPARENT) from addresses of its choosing, three services each: on
  the threshold (3) and as a "scan" of three daemons, they would ban those addresses;
* a local user (uid 65534, setpriv) forges IPv6 datagrams with IPV6_FREEBIND to the
  host's own ::1, which root's hook then reports as trusted.

Every forged refusal is reported (trusted, marked udp) and none bans; in the same run a
TCP client refused three times by in.fingerd is banned.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PYTHON, maildir_messages, require, wait_until
from netns import enter
from nftns import HOST4, HOST6, Daemon, Netns, Sources, elements, link, require_netns
from wrapped import Inetd, missing

from wrapalert import config
from wrapalert.cli import hosts_deny_line
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.witness import Witness
from wrapalert.model import Event

pytestmark = pytest.mark.system

UDP_DAEMONS = ("in.tftpd", "in.talkd", "in.ntalkd")
FORGED4, FORGED6, FORGED_LOCAL = "203.0.113.66", "2001:db8:66::1", "2001:db8:77::1"
FORGED = (FORGED4, FORGED6, FORGED_LOCAL)
ATTACKER = "203.0.113.9"

# Root in the remote namespace: an IPv4 datagram with any source (IP_HDRINCL; the kernel
# fills in the header's length, id and checksum; a UDP checksum of 0 means none).
RAW4 = """
import socket, struct, sys
source, dest = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for port in map(int, sys.argv[3:]):
    payload = b"\\x00\\x01forged\\x00octet\\x00"
    udp = struct.pack("!HHHH", 4444, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(source), socket.inet_aton(dest))
    sock.sendto(ip + udp, (dest, 0))
"""
# An IPv6 datagram from an address that is not ours: IPV6_TRANSPARENT (75) needs
# CAP_NET_ADMIN, IPV6_FREEBIND (78) nothing at all.
FREE6 = """
import socket, sys
option, source, dest = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for port in map(int, sys.argv[4:]):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, option, 1)
    sock.bind((source, 4444))
    sock.sendto(b"\\x00\\x01forged\\x00octet\\x00", (dest, port))
    sock.close()
"""
IPV6_TRANSPARENT, IPV6_FREEBIND = 75, 78


@pytest.fixture
def host() -> Iterator[Netns]:
    """The namespace the daemon and the wrapped services run in."""
    require_netns()
    ns = Netns()
    yield ns
    ns.close()


@pytest.fixture
def peer(host: Netns) -> Iterator[Netns]:
    """A second namespace joined to the host by a veth pair: where root forges from."""
    ns = Netns()
    link(host, ns)
    yield ns
    ns.close()


@pytest.fixture
def services(host: Netns, sockdir: Path) -> Iterator[Inetd]:
    """inetd in the daemon's namespace: three tcpd-wrapped UDP services for IPv4 forgeries,
    three for IPv6 ones from outside, three for the local user's, then in.fingerd (TCP)."""
    reason = missing("inetd")
    require(reason is None, reason or "")
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    lines = [
        *(f"{{port}} dgram udp4 wait root {{tcpd}} {name}" for name in UDP_DAEMONS),
        *(f"{{port}} dgram udp6 wait root {{tcpd}} {name}" for name in UDP_DAEMONS * 2),
        "{port} stream tcp nowait root {tcpd} in.fingerd",
    ]
    inetd = Inetd(sockdir / "inetd", lines, host.pid)
    (sockdir / "inetd").mkdir()
    yield inetd
    inetd.stop()


@pytest.fixture
def daemon(host: Netns, sockdir: Path) -> Iterator[Daemon]:
    """The daemon with an nftables sink: threshold 3, and a scan of 3 daemons bans too."""
    started = Daemon(sockdir, host, "threshold = 3\nscan = true\n", group_wait="2s")
    yield started
    started.proc.close()
    started.sources.close()


def test_forged_udp_sources_never_ban_and_a_tcp_attacker_still_is(
    host: Netns, peer: Netns, services: Inetd, daemon: Daemon, sockdir: Path
) -> None:
    """Nine forged refusals (IPv4 and IPv6 from outside, IPv6 from a local user, each a
    scan of three daemons past the threshold) are reported as trusted udp reports and ban
    nothing; three refused TCP connections from a real client ban it."""
    services.set_deny(hosts_deny_line(config.load(daemon.config), PYTHON, form="durable"))
    services.start()
    v4, v6, local = services.ports[0:3], services.ports[3:6], services.ports[6:9]
    peer.run(PYTHON, "-c", RAW4, FORGED4, HOST4, *map(str, v4))
    peer.run(PYTHON, "-c", FREE6, str(IPV6_TRANSPARENT), FORGED6, HOST6, *map(str, v6))
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON]
    host.run(*as_nobody, "-c", FREE6, str(IPV6_FREEBIND), FORGED_LOCAL, "::1", *map(str, local))
    wait_until(lambda: daemon.status()["received"] >= 9, 30, "the nine forged refusals")
    evidence = daemon.status()["evidence"]
    assert evidence == {"error": None, "udp": 9}  # each refusal's datagram, not a handshake
    for _ in range(3):  # a real remote host, refused by in.fingerd through tcpd
        daemon.sources.connect(ATTACKER, services.ports[9])
    wait_until(lambda: ATTACKER in elements(daemon.ns), 15, "the TCP attacker's ban")
    status = daemon.status()
    assert status["untrusted"] == 0  # root's hook reported every forgery: trusted
    assert status["evidence"]["tcp"] == 3
    assert set(elements(daemon.ns)) == {ATTACKER}
    assert status["bans"]["added"] == 1
    # Every forged source is in a digest, marked; none is told as more than a report.
    wait_until(lambda: all(row(sockdir, f) for f in FORGED), 20, "the forged rows")
    for forged in FORGED:
        assert row(sockdir, forged)[1].strip() == "udp: source address not verified"


def row(base: Path, addr: str) -> list[str]:
    """The digests' sources row for `addr` and the line under it ([] before a digest
    lists it)."""
    lines = [
        line
        for msg in maildir_messages(base / "Maildir")
        if (part := msg.get_body(("plain",))) is not None
        for line in str(part.get_content()).splitlines()
    ]
    at = next((i for i, line in enumerate(lines) if line.startswith(addr + " ")), None)
    return [] if at is None else lines[at : at + 2]


def test_a_connection_in_another_network_namespace_is_unknown(host: Netns) -> None:
    """A wrapped service in another network namespace than the daemon's: its connection is
    not in the daemon's tables, so its refusal is unknown (never banning), never tcp."""
    sources = Sources(host)
    try:
        server, server_port, client_port = sources.connect("203.0.113.5")  # into HOST
        fields = {
            "daemon": "sshd",
            "client_addr": "203.0.113.5",
            "client_port": str(client_port),
            "server_addr": server,
            "server_port": str(server_port),
        }
        here = Event(dict(fields), time.time(), uid=0, trusted=True)
        stats = Stats()
        Witness(stats, time.time).check(here)  # from this test's own namespace
        assert (here.transport, dict(stats.evidence)) == ("unknown", {"gone": 1})
        there = subprocess.run(  # the same report, checked in HOST: its connection is there
            [*enter(host.pid), PYTHON, "-c", CHECK, json.dumps(fields)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert there.stdout.strip() == "tcp", there.stderr
    finally:
        sources.close()


# Run in a namespace: the daemon's own check of the report given as JSON.
CHECK = """
import json, sys, time
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.witness import Witness
from wrapalert.model import Event
event = Event(json.loads(sys.argv[1]), time.time(), uid=0, trusted=True)
Witness(Stats(), time.time).check(event)
print(event.transport)
"""
