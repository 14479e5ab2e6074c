"""Exactly once under load: a flood of refused connections through real tcpd, each counted once.

Two private network namespaces (tests/netns.py): HOST runs openbsd-inetd with
in.fingerd through tcpd (real libwrap, a private /etc/hosts.deny) and the
wrapalert daemon with a jsonl sink (every event a record, unthrottled); PEER
holds every address of 10.78.0.0/16, the clients. The host's side (inetd,
so tcpd and every hook, and the daemon) runs on one CPU with --hogs busy
loops, what a much busier machine does to it: the daemon drains its socket
late, loggers block on the full queue, and some finish sending just as
`timeout` ends them; to make that common, the daemon is also stopped now
and then (--stall-every, --stall-for): its queue (net.unix.max_dgram_qlen
datagrams) fills, and loggers blocked on it send all at once when it wakes. Clients connect at
--rate a second from ever new addresses, and each connection's record is
looked for by its client address and port (the daemon's %a and %r): exactly
one record per connection is the goal.

On a loaded machine `timeout 0.1` now and then kills a logger that had already
sent, and `||` runs the client too: two reports of one refusal. Variants,
interleaved by block: *current*, the default line (both halves carry i=$$,
the daemon drops the copy: `duplicates` in status), and *old*, the same line
without i=$$ (what wrapalert printed before), whose copies count twice. Each
has a service (port) of its own, so a late tcpd can never read the other's
line.

Usage: python bench/exactly_once.py [--connections 1500] [--rate 60] [--hogs 6]
Writes exactly_once.json and exactly_once.md to bench/results/. Needs root,
openbsd-inetd, tcpd, libwrap0, util-linux logger.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import machine as bench_machine
from machine import tool_version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from netns import HOST4, PEER4, Connector, Network  # noqa: E402 - after the path is set up
from wrapped import Inetd, missing  # noqa: E402

from wrapalert import config, hostsdeny  # noqa: E402
from wrapalert.cli import hosts_deny_line  # noqa: E402
from wrapalert.daemon import control  # noqa: E402

WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
HOG = "while True: pass"


PIN = ["taskset", "-c", "0"]  # the host's side shares one CPU with the hogs


class PinnedInetd(Inetd):
    """inetd (so tcpd and every hook it spawns) on the hogs' CPU."""

    def prefix(self) -> list[str]:
        return [*PIN, *super().prefix()]


VARIANTS = ("current", "old")
NAMES = {"current": "in.fingerd", "old": "in.oldfingerd"}  # tcpd's name for each service


def write_config(base: Path) -> Path:
    path = base / "wrapalert.toml"
    path.write_text(
        f'[daemon]\nsocket = "{base}/notify.sock"\ncontrol_socket = "{base}/control.sock"\n'
        f'state_dir = "{base}/state"\nspool_dir = "{base}/spool"\ntrusted_uids = [0]\n'
        f'[digest]\ngroup_wait = "1h"\n'
        f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'
        f'[[sink]]\ntype = "jsonl"\npath = "{base}/events.jsonl"\nevents_per_second = 1000000\n'
    )
    return path


def records(base: Path) -> Counter[tuple[str, str]]:
    """Event records by (client address, client port)."""
    found: Counter[tuple[str, str]] = Counter()
    path = base / "events.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record.get("type") == "event":
            found[record.get("client_addr", ""), record.get("client_port", "")] += 1
    return found


def stall(pid: int, every: float, length: tuple[float, float], done: threading.Event) -> None:
    """Stop the daemon now and then (SIGSTOP, SIGCONT): a daemon busy elsewhere (a commit,
    a digest, the CPU taken) drains its socket late, loggers block on the full queue, and
    those that finish sending as `timeout` fires make a second copy."""
    while not done.wait(every):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(random.uniform(*length))
        os.kill(pid, signal.SIGCONT)


def status(base: Path) -> dict[str, object]:
    result: dict[str, object] = control.request(base / "control.sock", "status")["status"]
    return result


def machine() -> dict[str, object]:
    def package(name: str) -> str:
        return tool_version(["dpkg-query", "-W", "-f", "${Version}", name]) or "missing"

    return bench_machine.machine(
        logger=tool_version(["logger", "-V"]) or "missing",
        libwrap0=package("libwrap0"),
        tcpd=package("tcpd"),
        **{"openbsd-inetd": package("openbsd-inetd")},
        loadavg=Path("/proc/loadavg").read_text().split()[:3],
    )


def run(args: argparse.Namespace) -> dict[str, object]:  # noqa: PLR0915 - one scenario
    base = Path(tempfile.mkdtemp(prefix="wa-once-", dir="/tmp"))
    base.chmod(0o755)
    (base / "spool").mkdir()
    network = Network()
    network.run(network.host, "ip", "route", "replace", "10.78.0.0/16", "via", PEER4)
    network.run(network.peer, "ip", "route", "add", "local", "10.78.0.0/16", "dev", "lo")
    cfg_path = write_config(base)
    daemon = subprocess.Popen(
        [*PIN, *network.enter(network.host), WRAPALERT, "run", "-c", str(cfg_path)],
        stdin=subprocess.DEVNULL,
        stderr=(base / "daemon.log").open("ab"),
    )
    # One service per variant: tcpd names it by argv[0], and hosts.deny gives each its
    # line, read as tcpd runs (however late): no refusal can meet the other's line.
    services = [f"{{port}} stream tcp nowait root {{tcpd}} {name}" for name in NAMES.values()]
    inetd = PinnedInetd(base, services, network.host)
    attacker = None
    hog_argv = [*PIN, sys.executable, "-c", HOG]
    hogs = [subprocess.Popen(hog_argv) for _ in range(args.hogs)]
    made: dict[str, list[tuple[str, str]]] = {v: [] for v in VARIANTS}
    loads: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while not (base / "control.sock").exists():
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        cfg = config.load(cfg_path)
        current, old = (
            hosts_deny_line(cfg, sys.executable, daemons=name, form="durable")
            for name in NAMES.values()
        )
        old = old.replace(f" {hostsdeny.HOOK_ID}", "")
        assert hostsdeny.HOOK_ID in current
        assert hostsdeny.HOOK_ID not in old
        inetd.set_deny(f"{current}\n{old}")
        inetd.start()
        ports = dict(zip(VARIANTS, inetd.ports, strict=True))
        attacker = Connector(network.peer)
        stop_stalls = threading.Event()
        stalls = threading.Thread(
            target=stall, args=(daemon.pid, args.stall_every, args.stall_for, stop_stalls)
        )
        stalls.start()
        start = time.monotonic()
        for i in range(2 * args.connections):
            variant = VARIANTS[(i // args.block) % 2]
            if i % args.block == 0:
                loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
            source = f"10.78.{i // 250}.{i % 250 + 1}"
            port = attacker.connect(source, HOST4, ports[variant])
            made[variant].append((source, str(port)))
            delay = start + (i + 1) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stop_stalls.set()
        stalls.join()
        for hog in hogs:
            hog.kill()
        hogs = []
        total = 2 * args.connections
        wait = time.monotonic() + 60
        while sum(records(base).values()) < total and time.monotonic() < wait:
            time.sleep(0.5)
        time.sleep(3)  # the spool's late copies, if any
        seen = records(base)
        final = status(base)
    finally:
        for hog in hogs:
            hog.kill()
        if attacker is not None:
            attacker.close()
        inetd.stop()
        daemon.terminate()
        daemon.wait(timeout=30)
        network.close()
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, object] = {}
    for variant in VARIANTS:
        counts = [seen[key] for key in made[variant]]
        result[variant] = {
            "connections": len(counts),
            "counted_once": sum(c == 1 for c in counts),
            "counted_twice_or_more": sum(c > 1 for c in counts),
            "missing": sum(c == 0 for c in counts),
        }
    return {
        "variants": result,
        "duplicates_dropped": final["duplicates"],
        "spooled": final["spooled"],
        "syslog_fallbacks": final["syslog_fallbacks"],
        "received": final["received"],
        "loadavg_during": {"median": sorted(loads)[len(loads) // 2], "max": max(loads)},
    }


def markdown(report: dict[str, object]) -> str:
    m = report["machine"]
    assert isinstance(m, dict)
    settings = report["settings"]
    assert isinstance(settings, dict)
    variants = report["variants"]
    assert isinstance(variants, dict)
    load = report["loadavg_during"]
    assert isinstance(load, dict)
    lines = [
        "# Exactly once under load: each refused connection counted once",
        "",
        (
            f"{m['date']}; {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"Python {m['python']}; {m['logger']}; libwrap0 {m['libwrap0']}, tcpd {m['tcpd']}, "
            f"openbsd-inetd {m['openbsd-inetd']}."
        ),
        (
            f"{settings['connections']} connections per variant at {settings['rate']}/s through "
            f"inetd and tcpd, each from a fresh address; the host's side (inetd, tcpd, the "
            f"hooks, the daemon) on one CPU with {settings['hogs']} busy loops, the daemon "
            f"stopped for {settings['stall_for'][0]:g} to {settings['stall_for'][1]:g} s every "
            f"{settings['stall_every']} s; variants "
            f"alternate every {settings['block']} connections. Load average "
            f"during the flood: median {load['median']}, max {load['max']} (before "
            f"{m['loadavg']}, after {report['loadavg_after']})."
        ),
        "",
        "| hosts.deny line | connections | counted once | counted twice | missing |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"current": "default (`i=$$` in both halves)", "old": "without `i=$$` (before)"}
    for variant, r in variants.items():
        lines.append(
            f"| {names[variant]} | {r['connections']} | {r['counted_once']} | "
            f"{r['counted_twice_or_more']} | {r['missing']} |"
        )
    lines += [
        "",
        (
            f"- copies the daemon dropped (status `duplicates`): {report['duplicates_dropped']}; "
            f"events received: {report['received']}; spooled: {report['spooled']}; clients "
            f"that fell back to syslog (their 250 ms spent): {report['syslog_fallbacks']}"
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=1500, help="per variant")
    parser.add_argument("--rate", type=float, default=60.0, help="connections a second")
    parser.add_argument("--hogs", type=int, default=6, help="busy loops alongside")
    parser.add_argument("--block", type=int, default=100, help="connections per variant in a row")
    parser.add_argument(
        "--stall-every", type=float, default=0.5, help="seconds between the daemon's stalls"
    )
    parser.add_argument(
        "--stall-for",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(0.15, 0.35),
        help="each stall's length, at random between the two (seconds)",
    )
    args = parser.parse_args()
    why = missing("inetd")
    if why:
        sys.exit(f"exactly_once: {why}")
    report: dict[str, object] = {"machine": machine(), **run(args)}
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["settings"] = vars(args)
    out = ROOT / "bench" / "results"
    (out / "exactly_once.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "exactly_once.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
