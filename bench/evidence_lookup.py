"""What asking the kernel about one refused connection costs, against the number of sockets.

In a private network namespace (the script re-executes itself under `unshare -n`),
N established TCP connections are opened over loopback (N in --connections; each
is two sockets in the kernel's table, held by child processes), and the one a
report names is looked up 2,000 times (interleaved rounds, median) three ways:

  exact    what the daemon does (wrapalert/sockdiag.py): one NETLINK_SOCK_DIAG
           request naming both ends; the kernel answers from its hash tables
  dump     a NETLINK_SOCK_DIAG dump filtered in the kernel by the two ports
           (both families): no need for the server address (%A), but the kernel
           walks its whole established hash for it
  proc     /proc/net/tcp and tcp6 read and parsed in Python, the way a unit with
           ProcSubset=all could (the packaged one has ProcSubset=pid)

and `witness`: the daemon's whole check per report (Witness.check: an exact TCP
lookup and the cookie's bookkeeping), with its worst single call, which is how
long one report can hold the event loop.

Usage: python bench/evidence_lookup.py [--connections 0,1000,10000,50000] [--lookups 2000]
Writes evidence_lookup.json and .md to bench/results/. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import machine as bench_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wrapalert import sockdiag  # noqa: E402 - after the path is set up
from wrapalert.daemon.stats import Stats  # noqa: E402
from wrapalert.daemon.witness import Witness  # noqa: E402
from wrapalert.model import Event  # noqa: E402

INSIDE = "WRAPALERT_EVIDENCE_BENCH_NETNS"
PORT = 2222
STATES = sum(1 << s for s in sockdiag.HANDSHAKE_DONE)


CHUNK = 9000  # connections per holding process (two descriptors each; RLIMIT_NOFILE)


def open_connections(count: int) -> tuple[list[socket.socket], list[int], tuple[str, int]]:
    """`count` established connections to [::]:PORT over loopback (2 sockets each in
    the kernel's table), held by child processes of CHUNK each, plus the one a report
    names, held here: (its sockets, the children, its source address and port)."""
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", PORT))
    listener.listen(65535)
    children = []
    for first in range(0, count, CHUNK):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a holder: its connections, from a source address of its own
            os.close(ready_r)
            held = []
            for _ in range(min(CHUNK, count - first)):
                client = socket.socket()
                client.bind((f"127.1.{first // CHUNK}.2", 0))
                client.connect(("127.0.0.1", PORT))
                held += [client, listener.accept()[0]]
            os.write(ready_w, b"x")
            time.sleep(86400)
            os._exit(0)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        children.append(pid)
    client = socket.socket()
    client.bind(("127.0.0.2", 0))
    client.connect(("127.0.0.1", PORT))
    server, _ = listener.accept()
    return [listener, client, server], children, client.getsockname()


def dump_request(family: int, sport: int, dport: int) -> bytes:
    sockid = struct.pack("!HH", sport, dport) + bytes(32) + struct.pack("=I8s", 0, b"\xff" * 8)
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, STATES) + sockid
    flags = sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_DUMP
    return struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body


def dump(sock: socket.socket, client: tuple[str, int]) -> bool:
    """A kernel-filtered dump by ports, both families; whether the connection is there."""
    found = False
    for family in (socket.AF_INET, socket.AF_INET6):
        sock.send(dump_request(family, PORT, client[1]))
        done = False
        while not done:
            data = sock.recv(1 << 20)
            offset = 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == sockdiag.NLMSG_DONE:
                    done = True
                    break
                found |= kind == sockdiag.SOCK_DIAG_BY_FAMILY
                offset += (length + 3) & ~3
    return found


def proc(client: tuple[str, int]) -> bool:
    """/proc/net/tcp{,6} read and parsed: whether a post-handshake socket has this peer."""
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(client[0]), 'big')):08X}"
    port = f"{client[1]:04X}"
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, rport = fields[2].rpartition(":")
            if rport == port and addr.endswith(want) and int(fields[3], 16) in (1, 8):
                return True
    return False


def measure(count: int, lookups: int) -> dict[str, float]:
    held, children, client = open_connections(count)
    diag = sockdiag.SockDiag()
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, sockdiag.NETLINK_SOCK_DIAG)
    ends = sockdiag.Ends("127.0.0.1", PORT, client[0], client[1])
    stats = Stats()
    witness = Witness(stats, time.time)
    fields = {
        "daemon": "sshd",
        "client_addr": client[0],
        "client_port": str(client[1]),
        "server_addr": "127.0.0.1",
        "server_port": str(PORT),
    }

    def exact() -> bool:
        found = diag.lookup(socket.IPPROTO_TCP, ends)
        return found is not None and found.state in sockdiag.HANDSHAKE_DONE

    def check() -> bool:
        witness.new_batch()
        witness._used.clear()  # noqa: SLF001 - the same socket each time: not "reused"
        event = Event(dict(fields), time.time(), uid=0, trusted=True)
        witness.check(event)
        return event.transport == "tcp"

    ways: dict[str, Callable[[], bool]] = {
        "exact": exact,
        "dump": lambda: dump(raw, client),
        "proc": lambda: proc(client),
        "witness": check,
    }
    per: dict[str, list[float]] = {name: [] for name in ways}
    worst: dict[str, float] = dict.fromkeys(ways, 0.0)
    rounds = 20
    for r in range(rounds):
        names = list(ways)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotating order
        for name in names:
            n = max(1, lookups // rounds if name != "proc" or count < 10000 else 2)
            start = time.perf_counter()
            for _ in range(n):
                one = time.perf_counter()
                assert ways[name](), f"{name} did not find the connection"
                worst[name] = max(worst[name], time.perf_counter() - one)
            per[name].append((time.perf_counter() - start) / n)
    for sock in held:
        sock.close()
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    diag.close()
    raw.close()
    out = {f"{name}_us": statistics.median(times) * 1e6 for name, times in per.items()}
    out |= {f"{name}_worst_ms": worst[name] * 1e3 for name in ways}
    return out


def markdown(report: dict[str, object]) -> str:
    m = report["machine"]
    assert isinstance(m, dict)
    rows = report["results"]
    assert isinstance(rows, dict)
    lines = [
        "# One report's evidence lookup, against the number of sockets",
        "",
        (
            f"{m['date']}; {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"Python {m['python']}; load before/after {m['loadavg']} / {report['loadavg_after']}."
        ),
        (
            "Median microseconds per lookup of one established connection among N (2N sockets; "
            "interleaved "
            "rounds); worst = the longest single call (how long one report holds the event "
            "loop). *exact*: one NETLINK_SOCK_DIAG request naming both ends (what the daemon "
            "does); *dump*: a dump filtered by ports in the kernel, both families; *proc*: "
            "/proc/net/tcp and tcp6 parsed; *witness*: the daemon's whole check per report."
        ),
        "",
        (
            "| connections | exact us | dump us | proc us | witness us | witness worst ms "
            "| dump / exact | proc / exact |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, r in rows.items():
        lines.append(
            f"| {int(count):,} | {r['exact_us']:.1f} | {r['dump_us']:.0f} | {r['proc_us']:,.0f} "
            f"| {r['witness_us']:.1f} | {r['witness_worst_ms']:.2f} "
            f"| {r['dump_us'] / r['exact_us']:.0f}x | {r['proc_us'] / r['exact_us']:,.0f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", default="0,1000,10000,50000")
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        env = os.environ | {INSIDE: "1"}
        os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)  # noqa: S606
    os.system("ip link set lo up")  # noqa: S605 - our own namespace
    counts = [int(c) for c in args.connections.split(",")]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = bench_machine.machine(loadavg=Path("/proc/loadavg").read_text().split()[:3])
    results = {str(count): measure(count, args.lookups) for count in counts}
    report: dict[str, object] = {
        "machine": before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "settings": vars(args),
        "results": results,
    }
    out = ROOT / "bench" / "results"
    (out / "evidence_lookup.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "evidence_lookup.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
