"""Time to ban: from the connection that crosses the threshold to its source in the kernel set.

Two private network namespaces (tests/netns.py): HOST runs openbsd-inetd with
in.fingerd through tcpd (real libwrap, a private /etc/hosts.deny holding
`wrapalert hosts-deny-line`'s default line: logger, else the client) and the
wrapalert daemon with an nftables sink (threshold 3, scan off); PEER holds
every address of 10.78.0.0/16 (a local route), the attackers. For each ban a
fresh source makes two refused connections, then a third: the clock starts
just before that third connect() and stops when the kernel announces the new
set element (a NETLINK_NETFILTER socket in HOST subscribed to nftables'
multicast group: no polling). Between the two: the TCP handshake, inetd's
fork and exec of tcpd, libwrap, the hook's shell, logger, the daemon's intake
with its evidence lookup (sock_diag), the ban stage and one `nft` run. So
the figure bounds "from the hook's start to the kernel" from above.

Variants, interleaved by ban (rotating): idle, and loaded (--hogs busy loops,
one per CPU by default, for the whole variant's bans).

Usage: python bench/time_to_ban.py [--bans 200] [--hogs N]
Writes time_to_ban.json and time_to_ban.md to bench/results/. Needs root,
nftables, openbsd-inetd, tcpd, libwrap0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine as bench_machine
from machine import tool_version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from netns import HOST4, PEER4, Connector, Network  # noqa: E402 - after the path is set up
from wrapped import Inetd, missing  # noqa: E402

from wrapalert import config  # noqa: E402
from wrapalert.cli import hosts_deny_line  # noqa: E402
from wrapalert.daemon import control  # noqa: E402

WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
THRESHOLD = 3
# In HOST: print the time and bytes of every new nftables set element, as the kernel
# announces it (NFT_MSG_NEWSETELEM to the NFNLGRP_NFTABLES group, sent at commit).
WATCH = """
import socket, struct, sys, time
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
sock.bind((0, 0))
sock.setsockopt(270, 1, 7)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES
print("ready", flush=True)
NEWSETELEM = (10 << 8) | 12  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWSETELEM
while True:
    data = sock.recv(1 << 16)
    now = time.time()
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == NEWSETELEM:
            print(repr(now), data[offset : offset + length].hex(), flush=True)
        offset += max((length + 3) & ~3, 16)
"""
HOG = "while True: pass"


def write_config(base: Path) -> Path:
    path = base / "wrapalert.toml"
    path.write_text(
        f'[daemon]\nsocket = "{base}/notify.sock"\ncontrol_socket = "{base}/control.sock"\n'
        f'state_dir = "{base}/state"\nspool_dir = "{base}/spool"\ntrusted_uids = [0]\n'
        f'[digest]\ngroup_wait = "1h"\n'
        f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'
        f'[[sink]]\ntype = "nftables"\nthreshold = {THRESHOLD}\nban_for = "1h"\nscan = false\n'
    )
    return path


class Watch:
    """The set-element announcements in HOST, as they come."""

    def __init__(self, network: Network) -> None:
        self.proc = subprocess.Popen(
            [*network.enter(network.host), sys.executable, "-I", "-S", "-c", WATCH],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.out = self.proc.stdout
        assert self.out.readline().strip() == "ready"

    def added(self, source: str) -> float:
        """When the kernel announced an element holding `source` (IPv4) next."""
        packed = socket.inet_aton(source).hex()
        while True:
            line = self.out.readline()
            if not line:
                raise RuntimeError("the watcher ended")
            when, message = line.split()
            if packed in message:
                return float(when)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def one_ban(attacker: Connector, source: str, port: int, watch: Watch) -> tuple[float, float]:
    """Two refusals from `source`, then the third: when its connect() began, and when the
    kernel announced the set element."""
    for _ in range(THRESHOLD - 1):
        attacker.connect(source, HOST4, port)
    time.sleep(0.05)  # the first refusals' hooks are done: the third crosses the line
    start = time.time()
    attacker.connect(source, HOST4, port)
    return start, watch.added(source)


def decided(log: str) -> dict[str, float]:
    """When the daemon decided each ban (its `ban_added` log line), by target."""
    found = {}
    for line in log.splitlines():
        if "event='ban_added'" in line:
            words = dict(w.split("=", 1) for w in line.split() if "=" in w)
            stamp = words["timestamp"].strip("'").replace("Z", "+00:00")
            found[words["target"].strip("'")] = dt.datetime.fromisoformat(stamp).timestamp()
    return found


def machine() -> dict[str, object]:
    def package(name: str) -> str:
        return tool_version(["dpkg-query", "-W", "-f", "${Version}", name]) or "missing"

    return bench_machine.machine(
        nft=tool_version(["nft", "--version"]) or "missing",
        libwrap0=package("libwrap0"),
        tcpd=package("tcpd"),
        **{"openbsd-inetd": package("openbsd-inetd")},
        loadavg=Path("/proc/loadavg").read_text().split()[:3],
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="wa-ttb-", dir="/tmp"))
    base.chmod(0o755)
    (base / "spool").mkdir()
    network = Network()
    # Every 10.78.x.y is PEER's own (a local route): a fresh attacker per ban, no ARP.
    network.run(network.host, "ip", "route", "replace", "10.78.0.0/16", "via", PEER4)
    network.run(network.peer, "ip", "route", "add", "local", "10.78.0.0/16", "dev", "lo")
    cfg_path = write_config(base)
    daemon = subprocess.Popen(
        [*network.enter(network.host), WRAPALERT, "run", "-c", str(cfg_path)],
        stdin=subprocess.DEVNULL,
        stderr=(base / "daemon.log").open("ab"),
    )
    inetd = Inetd(base, ["{port} stream tcp nowait root {tcpd} in.fingerd"], network.host)
    watch = attacker = None
    hogs: list[subprocess.Popen[bytes]] = []
    marks: dict[str, list[tuple[str, float, float]]] = {"idle": [], "loaded": []}
    loads: dict[str, list[float]] = {"idle": [], "loaded": []}
    try:
        deadline = time.monotonic() + 30
        while not (base / "control.sock").exists():
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        inetd.set_deny(hosts_deny_line(config.load(cfg_path), sys.executable, form="durable"))
        inetd.start()
        watch = Watch(network)
        attacker = Connector(network.peer)
        for i in range(2 * args.bans):
            variant = ("idle", "loaded")[(i // args.block) % 2]
            want_hogs = args.hogs if variant == "loaded" else 0
            while len(hogs) > want_hogs:
                hogs.pop().kill()
            while len(hogs) < want_hogs:
                hogs.append(subprocess.Popen([sys.executable, "-c", HOG]))
            source = f"10.78.{i // 250}.{i % 250 + 1}"
            marks[variant].append((source, *one_ban(attacker, source, inetd.port, watch)))
            loads[variant].append(float(Path("/proc/loadavg").read_text().split()[0]))
        status = control.request(base / "control.sock", "status")["status"]
        decisions = decided((base / "daemon.log").read_text())
    finally:
        for hog in hogs:
            hog.kill()
        for part in (watch, attacker):
            if part is not None:
                part.close()
        inetd.stop()
        daemon.terminate()
        daemon.wait(timeout=30)
        network.close()
        shutil.rmtree(base, ignore_errors=True)
    times = {v: [(end - start) * 1e3 for _, start, end in m] for v, m in marks.items()}
    # The two halves: until the daemon decided (the hook, intake, evidence, the stage), and
    # from there into the kernel (the ban task's nft run).
    hook = {v: [(decisions[s] - start) * 1e3 for s, start, _ in m] for v, m in marks.items()}
    kernel = {v: [(end - decisions[s]) * 1e3 for s, _, end in m] for v, m in marks.items()}
    summary = {
        variant: {
            "bans": len(values),
            "p50_ms": statistics.median(values),
            "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values),
            "decided_p50_ms": statistics.median(hook[variant]),
            "decided_p99_ms": percentile(hook[variant], 99),
            "kernel_p50_ms": statistics.median(kernel[variant]),
            "kernel_p99_ms": percentile(kernel[variant], 99),
            "load_median": statistics.median(loads[variant]),
        }
        for variant, values in times.items()
    }
    return {"summary": summary, "times_ms": times, "status": status}


def markdown(report: dict[str, object]) -> str:
    m = report["machine"]
    assert isinstance(m, dict)
    summary = report["summary"]
    assert isinstance(summary, dict)
    settings = report["settings"]
    assert isinstance(settings, dict)
    bans = report["status"]["bans"]  # type: ignore[index]
    evidence = report["status"]["evidence"]  # type: ignore[index]
    lines = [
        "# Time to ban: the threshold-crossing connection to its set element in the kernel",
        "",
        (
            f"{m['date']}; {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"Python {m['python']}; {m['nft']}; libwrap0 {m['libwrap0']}, tcpd {m['tcpd']}, "
            f"openbsd-inetd {m['openbsd-inetd']}."
        ),
        (
            f"Load average before/after: {m['loadavg']} / {report['loadavg_after']} (a machine "
            "shared with other work)."
        ),
        "",
        (
            "Through real TCP, inetd, tcpd (libwrap) and the default hosts.deny line, in private "
            f"network namespaces; threshold {THRESHOLD}, each ban a fresh source. From just before "
            "the third refused connection's connect() to the kernel's announcement of the set "
            "element: handshake, tcpd, libwrap, the hook, the daemon's evidence lookup, the ban "
            "stage and one nft run. *loaded*: "
            f"{settings['hogs']} busy loops running alongside; variants alternate every "
            f"{settings['block']} bans."
        ),
        "",
        (
            "| variant | bans | load | p50 ms | p90 ms | p99 ms | max ms "
            "| decided p50 / p99 | into the kernel p50 / p99 |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {s['bans']} | {s['load_median']:.1f} | {s['p50_ms']:.1f} | "
            f"{s['p90_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | "
            f"{s['decided_p50_ms']:.1f} / {s['decided_p99_ms']:.1f} | "
            f"{s['kernel_p50_ms']:.1f} / {s['kernel_p99_ms']:.1f} |"
        )
    lines += [
        "",
        (
            "*decided*: from connect() to the daemon's `ban_added` log line (handshake, tcpd, "
            "libwrap, the hook, intake with its evidence lookup, the stage); *into the kernel*: "
            "from there to the announcement (the ban task, one nft run). *load*: the 1-minute "
            "load average, median over the variant's bans."
        ),
    ]
    lines += [
        "",
        f"- goal: p99 <= 100 ms; bans made: {bans['added']}; evidence: {evidence}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bans", type=int, default=200, help="per variant")
    parser.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--block", type=int, default=20, help="bans per variant in a row")
    args = parser.parse_args()
    for why in (
        missing("inetd"),
        None if shutil.which("nft") else "nft is missing (apt-get install nftables)",
    ):
        if why:
            sys.exit(f"time_to_ban: {why}")
    report: dict[str, object] = {"machine": machine(), **run(args)}
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["settings"] = vars(args)
    out = ROOT / "bench" / "results"
    (out / "time_to_ban.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "time_to_ban.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
