"""Private network namespaces for the nftables tests: the host the daemon runs in, a peer
joined to it by a veth pair (a remote host), and the kernel's ban sets as nft lists them.

The daemon (`wrapalert run`) runs inside a namespace that a holder process
keeps alive, so the table can be inspected after the daemon stops; reports
come through the real client, each for a real TCP connection from its
address into the host (`Sources`: the daemon bans only sources whose
handshake the kernel saw, daemon/witness.py), and the sets are read with
`nft -j` inside the namespace, parsed here (not by the sink's own parser,
which is under test). Needs root, nftables, iproute2 and unshare (CI has
them: a skip there is a failure).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import PYTHON, WRAPALERT, DaemonProcess, client, require, wait_until, write_config
from netns import Connector, Listener

TABLE = "wrapalert"
SETS = ("ban4", "ban4net", "ban6net", "ban6host", "ban6")
HOST4, PEER4, NEIGHBOUR4 = "10.9.0.1", "10.9.0.2", "10.9.0.3"
HOST6, PEER6, NEIGHBOUR6 = "fd00:9::1", "fd00:9:0:0::2", "fd00:9:0:1::3"
# The host's end of the link to `Sources`' remote namespace, and that namespace's own.
REMOTE_HOST4, REMOTE_HOST6, REMOTE4, REMOTE6 = "10.79.0.1", "fd79::1", "10.79.0.2", "fd79::2"

LISTEN = (
    "import socket, sys, threading\n"
    "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64); print('listening', flush=True)\n"
    "def echo(c):\n"
    "    c.sendall(b'hello\\n')\n"
    "    while (data := c.recv(100)):\n"
    "        c.sendall(data)\n"
    "while True:\n"
    "    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()\n"
)
# connect from argv[1] to argv[2]:argv[3]; print "connected" and the greeting, or the error
CONNECT = (
    "import socket, sys\n"
    "fam = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET\n"
    "s = socket.socket(fam); s.settimeout(1.5); s.bind((sys.argv[1], 0))\n"
    "try:\n"
    "    s.connect((sys.argv[2], int(sys.argv[3]))); print('connected', s.recv(100).decode())\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


# A TCP session from argv[1] to argv[2]:argv[3]: prints the greeting, then echoes each
# line of stdin through the connection, printing the answer or the error's name.
SESSION = (
    "import socket, sys\n"
    "fam = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET\n"
    "s = socket.socket(fam); s.settimeout(1.5); s.bind((sys.argv[1], 0))\n"
    "s.connect((sys.argv[2], int(sys.argv[3]))); print(s.recv(100).decode().strip(), flush=True)\n"
    "for line in sys.stdin:\n"
    "    try:\n"
    "        s.sendall(line.encode()); print(s.recv(100).decode().strip(), flush=True)\n"
    "    except OSError as e:\n"
    "        print(type(e).__name__, flush=True)\n"
)
UDP_ECHO = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); print('listening', flush=True)\n"
    "while True:\n"
    "    data, peer = s.recvfrom(100); s.sendto(data, peer)\n"
)
UDP_ASK = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)\n"
    "s.bind((sys.argv[1], 0)); s.sendto(b'query', (sys.argv[2], int(sys.argv[3])))\n"
    "try:\n"
    "    print(s.recv(100).decode())\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


def netns_possible() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "-n", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def require_netns() -> None:
    require(os.geteuid() == 0, "a private network namespace and nftables need root")
    require(shutil.which("nft") is not None, "nft is missing (apt-get install nftables)")
    require(shutil.which("nsenter") is not None, "nsenter is missing (util-linux)")
    require(shutil.which("ip") is not None, "ip is missing (apt-get install iproute2)")
    require(netns_possible(), "unshare -n is not permitted here")


class Netns:
    """A process holding a fresh network namespace, loopback up."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        self.pid = self.holder.pid
        self.linked: list[Netns] = []  # peers `link` joined to this one
        ours = Path("/proc/self/ns/net").readlink()
        wait_until(lambda: Path(f"/proc/{self.pid}/ns/net").readlink() != ours, 10, "unshare")
        self.run("ip", "link", "set", "lo", "up")

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=20,
            check=check,
        )

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", "-t", str(self.pid), "-n", *argv], stdout=subprocess.PIPE, text=True
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def link(host: Netns, peer: Netns) -> None:
    """A veth pair: the host has HOST4 and HOST6, the peer PEER4, NEIGHBOUR4, PEER6 and
    NEIGHBOUR6 (two IPv6 /64s, so a ban of one leaves the other)."""
    veth = ("ip", "link", "add", "wa0", "type", "veth", "peer", "name", "wa1")
    host.run(*veth, "netns", str(peer.pid))
    host.run("ip", "addr", "add", f"{HOST4}/24", "dev", "wa0")
    host.run("ip", "-6", "addr", "add", f"{HOST6}/48", "dev", "wa0", "nodad")
    host.run("ip", "link", "set", "wa0", "up")
    for addr in (f"{PEER4}/24", f"{NEIGHBOUR4}/24"):
        peer.run("ip", "addr", "add", addr, "dev", "wa1")
    for addr in (f"{PEER6}/48", f"{NEIGHBOUR6}/48"):
        peer.run("ip", "-6", "addr", "add", addr, "dev", "wa1", "nodad")
    peer.run("ip", "link", "set", "wa1", "up")
    settled(host, "wa0")
    settled(peer, "wa1")
    host.linked.append(peer)


def settled(ns: Netns, dev: str) -> None:
    """Wait until `dev`'s IPv6 addresses leave DAD (its link-local one takes about a
    second): until then a datagram sent across can vanish, and a forged-source test
    missed a third of its refusals."""
    deadline = time.monotonic() + 10
    while ns.run("ip", "-6", "addr", "show", "dev", dev, "tentative").stdout.strip():
        assert time.monotonic() < deadline, f"{dev}'s IPv6 addresses stay tentative"
        time.sleep(0.05)


def holds(ns: Netns, addr: str) -> bool:
    """Whether `addr` is one of the namespace's own addresses."""
    return bool(ns.run("ip", "-o", "addr", "show", "to", addr).stdout.strip())


class Sources:
    """Real TCP connections into the host from any address, one per report.

    From the host itself for loopback and its own addresses; from a peer `link` joined to
    it, for that peer's addresses; else from a remote namespace of its own (made at first
    need, joined by veth wr0/wr1): the host's default routes lead there, and each address
    is added to it when first used. Every connection is held open, as a refused service
    holds it while its hook runs."""

    def __init__(self, host: Netns) -> None:
        self.host = host
        self.remote: Netns | None = None
        self.listener: Listener | None = None
        self.connectors: dict[int, Connector] = {}

    def connect(self, addr: str, port: int | None = None) -> tuple[str, int, int]:
        """A connection from `addr` to `port` (default: a listener of its own): what
        libwrap's %A, %R and %r would say of it (server address, server port, client port)."""
        ip = ipaddress.ip_address(addr)
        source = str(ip)
        six = ip.version == 6
        if port is None:
            if self.listener is None:
                self.listener = Listener(self.host.pid)
            port = self.listener.port
        if ip.is_loopback:
            ns, dest = self.host, "::1" if six else "127.0.0.1"
        elif holds(self.host, source):
            ns, dest = self.host, source
        elif peer := next((p for p in self.host.linked if holds(p, source)), None):
            ns, dest = peer, HOST6 if six else HOST4
        else:
            ns, dest = self._remote(source), REMOTE_HOST6 if six else REMOTE_HOST4
        if ns.pid not in self.connectors:
            self.connectors[ns.pid] = Connector(ns.pid)
        return dest, port, self.connectors[ns.pid].connect(source, dest, port)

    def _remote(self, addr: str) -> Netns:
        """The remote namespace, with `addr` among its addresses."""
        if self.remote is None:
            self.remote = remote = Netns()
            host = self.host
            host.run("ip", "link", "add", "wr0", "type", "veth", "peer", "name", "wr1",
                     "netns", str(remote.pid))  # fmt: skip
            for ns, dev, four, six in (
                (host, "wr0", REMOTE_HOST4, REMOTE_HOST6),
                (remote, "wr1", REMOTE4, REMOTE6),
            ):
                ns.run("ip", "addr", "add", f"{four}/24", "dev", dev)
                ns.run("ip", "-6", "addr", "add", f"{six}/64", "dev", dev, "nodad")
                ns.run("ip", "link", "set", dev, "up")
                ns.run("ip", "route", "add", "default", "dev", dev)
                ns.run("ip", "-6", "route", "add", "default", "dev", dev)
            settled(host, "wr0")
            settled(remote, "wr1")
        if not holds(self.remote, addr):
            if ":" in addr:
                self.remote.run("ip", "-6", "addr", "add", f"{addr}/128", "dev", "wr1", "nodad")
            else:
                self.remote.run("ip", "addr", "add", f"{addr}/32", "dev", "wr1")
        return self.remote

    def close(self) -> None:
        for connector in self.connectors.values():
            connector.close()
        if self.listener is not None:
            self.listener.close()
        if self.remote is not None:
            self.remote.close()


def connect(ns: Netns, source: str, dest: str, port: int) -> str:
    """ "connected <greeting>" or the error's name, connecting from `source` in `ns`."""
    return ns.run(PYTHON, "-c", CONNECT, source, dest, str(port)).stdout.strip()


def listen(ns: Netns, addr: str, port: int) -> subprocess.Popen[str]:
    """An echo server in `ns` that greets each client; returns once it listens."""
    proc = ns.popen(PYTHON, "-c", LISTEN, addr, str(port))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


class Session:
    """A TCP connection held open from `source` in `ns` to dest:port (SESSION)."""

    def __init__(self, ns: Netns, source: str, dest: str, port: int) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(ns.pid), "-n", PYTHON, "-c", SESSION, source, dest, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.greeting = self.read()

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def say(self, text: str) -> str:
        """Send a line; the echo, or the error's name."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def elements(ns: Netns, table: str = TABLE, ipv6_prefix: int = 64) -> dict[str, dict[str, Any]]:
    """The kernel's ban sets: target -> {"timeout", "expires", "set"}; empty without the
    table. ban6net holds network addresses of `ipv6_prefix` bits, ban6host single IPv6
    addresses."""
    found: dict[str, dict[str, Any]] = {}
    for name in SETS:
        done = ns.run("nft", "-j", "list", "set", "inet", table, name, check=False)
        if done.returncode != 0:
            continue
        for item in json.loads(done.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                inner = elem["elem"]
                val = inner["val"]
                if isinstance(val, dict):
                    target = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                elif name == "ban6net":
                    target = f"{val}/{ipv6_prefix}"
                elif name == "ban6host":
                    target = f"{val}/128"
                else:
                    target = val
                found[target] = inner | {"set": name}
    return found


def tables(ns: Netns) -> list[str]:
    out = json.loads(ns.run("nft", "-j", "list", "tables").stdout)["nftables"]
    return [t["table"]["name"] for t in out if "table" in t]


class Daemon:
    """`wrapalert run` in the namespace with a Maildir and an nftables sink."""

    def __init__(
        self,
        base: Path,
        ns: Netns,
        nft: str = "",
        group_wait: str = "500ms",
        prefix: tuple[str, ...] = (),
        *,
        start: bool = True,
        extra: str = "",
        sources: Sources | None = None,
    ) -> None:
        sinks = (
            f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n\n'
            f'[[sink]]\ntype = "nftables"\n{nft}\n'
        )
        if "threshold" not in nft:
            sinks += "threshold = 3\n"
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.ns = ns
        self.pid = ns.pid
        self.prefix = prefix  # runs inside the namespace, before the daemon (unshare -m ...)
        self.sources = sources or Sources(ns)
        self.config = write_config(base, sinks=sinks, group_wait=group_wait, extra=extra)
        self.proc = DaemonProcess(base, self.config)
        (base / "notify.sock").chmod(0o666)  # uid 65534 must be able to send
        if start:
            self.start()

    def start(self, *, wait: bool = True, synced: bool = True) -> None:
        """Start it; wait for READY=1 and (`synced`) for its first sync of the table."""
        self.proc.start(prefix=("nsenter", "-t", str(self.pid), "-n", *self.prefix), wait=wait)
        if wait and synced:
            wait_until(self._synced, 10, "the first sync")

    def _synced(self) -> bool:
        kernel = self.status()["bans"].get("kernel")
        return kernel is None or kernel.get("in_sync") is True  # None: dry-run

    def kernel(self) -> dict[str, Any]:
        """status' bans.kernel object."""
        kernel: dict[str, Any] = self.status()["bans"].get("kernel") or {}
        return kernel

    def status(self) -> dict[str, Any]:
        return self.proc.status()

    def report(
        self, addr: str, count: int = 3, *, user: int | None = None, daemon: str = "sshd"
    ) -> None:
        """`count` refusals of `addr` through the real client, each for a real TCP
        connection from `addr` (its %A, %R and %r); waits until all arrived."""
        before = self.status()["received"]
        for _ in range(count):
            server, server_port, client_port = self.sources.connect(addr)
            client(
                f"d={daemon}",
                f"a={addr}",
                f"A={server}",
                f"R={server_port}",
                f"r={client_port}",
                f"socket={self.base}/notify.sock",
                user=user,
            )
        wait_until(lambda: self.status()["received"] >= before + count, 10, "the reports")

    def udp_report(self, addr: str, server: str, port: int, count: int = 1) -> None:
        """`count` refusals of `addr` by a UDP service bound at server:port in the
        namespace (its client address is the datagram's word, so the daemon marks them
        "udp"); waits until all arrived."""
        before = self.status()["received"]
        for i in range(count):
            client(
                "d=in.tftpd",
                f"a={addr}",
                f"A={server}",
                f"R={port}",
                f"r={40000 + i}",
                f"socket={self.base}/notify.sock",
            )
        wait_until(lambda: self.status()["received"] >= before + count, 10, "the reports")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`wrapalert ARGS -c CONFIG` (status, test-alert, ban ...)."""
        return subprocess.run(
            [WRAPALERT, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def ban(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("ban", *args)


class Daemons:
    """The daemons a test started (each in its own directory under `base`), closed at
    the end."""

    def __init__(self, base: Path, ns: Netns) -> None:
        self.base = base
        self.ns = ns
        self.started: list[Daemon] = []
        self.sources = Sources(ns)  # the connections behind every daemon's reports

    def __call__(self, nft: str = "", group_wait: str = "500ms", **kw: Any) -> Daemon:
        base = self.base if not self.started else self.base / f"d{len(self.started)}"
        self.started.append(Daemon(base, self.ns, nft, group_wait, sources=self.sources, **kw))
        return self.started[-1]

    def close(self) -> None:
        for d in self.started:
            d.proc.close()
        self.sources.close()
