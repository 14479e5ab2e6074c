"""Two private network namespaces joined by a veth pair: a host and the world outside it.

HOST is where the daemon, the wrapped services and the nftables table live: 10.77.0.1/24
and fd77::1/64 on its end of the pair (and lo). PEER stands for every remote host: any
address a test names is added to its end, and HOST routes the documentation networks
(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and 10.78.0.0/16 to it.
Each namespace is held by a `sleep` started under `unshare -n`; `nsenter -t PID -n` runs
a command in one.

`Connector` opens real TCP connections from a given source address and keeps them open
(the refused service holds its end while the hook runs): the kernel has then seen that
address complete a handshake, which is what the daemon's evidence check looks for;
`Listener` is a service that holds what it accepts.

Stdlib only: benches import it too. Needs root (namespaces, veth).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

HOST4, HOST6 = "10.77.0.1", "fd77::1"
PEER4, PEER6 = "10.77.0.2", "fd77::2"
ROUTED = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.78.0.0/16", "2001:db8::/32")


def _holder() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["unshare", "-n", "sleep", "86400"])
    ours = Path("/proc/self/ns/net").readlink()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/ns/net").readlink() == ours:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("unshare -n did not start")
        time.sleep(0.01)
    return proc


class Network:
    """HOST and PEER, their veth pair, addresses and routes (see the module docstring)."""

    def __init__(self) -> None:
        self._host = _holder()
        self._peer = _holder()
        self.peer_addresses: set[str] = set()
        try:
            self._wire()
        except BaseException:
            self.close()
            raise

    @property
    def host(self) -> int:
        """The pid holding HOST's namespace (nsenter -t PID -n)."""
        return self._host.pid

    @property
    def peer(self) -> int:
        return self._peer.pid

    def enter(self, pid: int) -> list[str]:
        return enter(pid)

    def run(self, pid: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.enter(pid), *argv], capture_output=True, text=True, timeout=30, check=check
        )

    def _wire(self) -> None:
        host, peer = self.host, self.peer
        for pid in (host, peer):
            self.run(pid, "ip", "link", "set", "lo", "up")
        self.run(host, "ip", "link", "add", "wh", "type", "veth", "peer", "name", "wp")
        self.run(host, "ip", "link", "set", "wp", "netns", str(peer))
        for pid, dev, four, six in ((host, "wh", HOST4, HOST6), (peer, "wp", PEER4, PEER6)):
            self.run(pid, "ip", "addr", "add", f"{four}/24", "dev", dev)
            self.run(pid, "ip", "-6", "addr", "add", f"{six}/64", "dev", dev, "nodad")
            self.run(pid, "ip", "link", "set", dev, "up")
        for net in ROUTED:
            self.run(host, "ip", "-6" if ":" in net else "-4", "route", "add", net, "dev", "wh")

    def add_peer_address(self, addr: str) -> None:
        """Make `addr` one of PEER's (a remote host's) addresses, once."""
        if addr in self.peer_addresses:
            return
        ip = ipaddress.ip_address(addr)
        if ip.version == 6:
            self.run(self.peer, "ip", "-6", "addr", "add", f"{addr}/128", "dev", "wp", "nodad")
        else:
            self.run(self.peer, "ip", "addr", "add", f"{addr}/32", "dev", "wp")
        self.peer_addresses.add(addr)

    def close(self) -> None:
        for proc in (self._peer, self._host):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# Run inside a namespace: one line per request on stdin, "SOURCE DEST PORT"; answers the
# connection's local port (or "error ...") and keeps the socket open until stdin ends.
_CONNECTOR = """
import socket, sys
held = []
for line in sys.stdin:
    source, dest, port = line.split()
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family)
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((dest, int(port)))
    except OSError as exc:
        print("error", exc, flush=True)
        sock.close()
        continue
    held.append(sock)
    print(sock.getsockname()[1], flush=True)
"""

# Run in HOST: accept on [::]:PORT (both families) and hold every connection, as a
# refused service's child does while its hook runs. Prints the port once listening.
_HOLDER = """
import socket, sys, threading
server = socket.socket(socket.AF_INET6)
server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind(("::", int(sys.argv[1])))
server.listen(4096)
print(server.getsockname()[1], flush=True)
held = []
while True:
    held.append(server.accept()[0])
"""


def enter(pid: int) -> list[str]:
    """The command prefix that runs a command in process `pid`'s network namespace."""
    return ["nsenter", "-t", str(pid), "-n"]


class Connector:
    """TCP connections from chosen source addresses in one namespace (that process `pid`
    holds), kept open."""

    def __init__(self, pid: int) -> None:
        self.proc = subprocess.Popen(
            [*enter(pid), sys.executable, "-I", "-S", "-c", _CONNECTOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def connect(self, source: str, dest: str, port: int) -> int:
        """Connect from `source` to `dest`:`port`; the connection's own (client) port."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{source} {dest} {port}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.isdigit():
            raise OSError(f"connect from {source} to {dest}:{port}: {answer or 'no answer'}")
        return int(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Listener:
    """A TCP service in the namespace that process `pid` holds: it accepts on [::]:`port`
    (both families; 0: a free port) and holds every connection (no libwrap)."""

    def __init__(self, pid: int, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [*enter(pid), sys.executable, "-I", "-S", "-c", _HOLDER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
