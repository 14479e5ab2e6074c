"""CPU per connection attempt from one flooding source, before its ban and after it.

Two private network namespaces joined by a veth pair (the script re-executes
itself under `unshare -n`): in the first, Debian's sshd (linked with libwrap)
listens on 10.9.0.1 with a private /etc/hosts.deny (tests/wrapped.py: a
private mount namespace) whose line is `wrapalert hosts-deny-line`'s
default, and the wrapalert daemon runs with a Maildir and an nftables sink;
the attacker connects from 10.9.0.2 in the second, as a remote host would.

First the sink bans the source by itself (threshold 10): the run records how
many of 30 attempts still connected. Then the config is
reloaded with a threshold no flood reaches, and rounds interleave the two
states, rotating their order: *open* (`wrapalert ban del`) and *banned*
(`wrapalert ban add`: the same set element the sink makes). Each phase sends
`--per-phase` attempts at `--rate` per second: a non-blocking connect from
10.9.0.2, at most 50 ms for the handshake, then close.

Measured per attempt, per phase:
  service   cpuacct cgroup holding sshd and the daemon: sshd's children, libwrap,
            the hook, logger or the client, and the daemon's work on each event;
            only our processes, whatever else loads the machine
  system    whole-machine busy CPU from /proc/stat (all CPUs, includes the
            attacker's own Python and any other load on a shared machine)

Usage: python bench/ban_cost.py [--rounds N] [--per-phase N] [--rate R]
Writes ban_cost.json and ban_cost.md to bench/results/. Needs root, nftables,
openssh-server, libwrap0 and a cpuacct cgroup (v1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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
from wrapped import Wrapped, missing  # noqa: E402 - after the path is set up

from wrapalert import config  # noqa: E402
from wrapalert.cli import hosts_deny_line  # noqa: E402
from wrapalert.daemon import control  # noqa: E402

CGROUP = Path("/sys/fs/cgroup/cpuacct")
SERVICE, ATTACKER = "10.9.0.1", "10.9.0.2"
SERVICE_MS = "service_ms"
BASELINE_PROCS = 2  # in the cgroup between phases: the sshd listener and the daemon
STATES = ("open", "banned", "idle")  # idle: no attempts, the same time (the baseline)
INSIDE = "WRAPALERT_BAN_BENCH_NETNS"  # set once re-executed inside the namespace
WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))


class SshdOnService(Wrapped):
    """tests/wrapped.py's sshd, listening on the namespace's service address."""

    def _command(self) -> list[str]:
        argv = super()._command()
        conf = self.base / "sshd_config"
        conf.write_text(
            conf.read_text().replace("ListenAddress 127.0.0.1", f"ListenAddress {SERVICE}")
        )
        return argv

    def _listening(self) -> bool:
        try:
            with socket.create_connection((SERVICE, self.port), timeout=1):
                return True
        except OSError:
            return False


def busy_jiffies() -> int:
    """Whole-machine busy time from /proc/stat's first line (USER_HZ ticks)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def attacker_namespace() -> subprocess.Popen[bytes]:
    """A process holding the attacker's namespace, linked to ours by a veth pair."""
    holder = subprocess.Popen(["unshare", "-n", "sleep", "3600"])
    ours = Path("/proc/self/ns/net").readlink()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{holder.pid}/ns/net").readlink() == ours:
        assert time.monotonic() < deadline, "unshare did not start"
        time.sleep(0.01)
    there = ["nsenter", "-t", str(holder.pid), "-n"]
    for argv in (
        ["ip", "link", "add", "wa0", "type", "veth", "peer", "name", "wa1"],
        ["ip", "link", "set", "wa1", "netns", str(holder.pid)],
        ["ip", "addr", "add", f"{SERVICE}/24", "dev", "wa0"],
        ["ip", "link", "set", "wa0", "up"],
        [*there, "ip", "link", "set", "lo", "up"],
        [*there, "ip", "addr", "add", f"{ATTACKER}/24", "dev", "wa1"],
        [*there, "ip", "link", "set", "wa1", "up"],
    ):
        subprocess.run(argv, check=True)
    return holder


# The attacker's side, run in its namespace: stdlib only and started before the counters
# are read (its start-up is not an attempt's cost). Per attempt: a non-blocking connect,
# at most 50 ms for the handshake, close. Prints how many connected.
FLOOD = """
import errno, select, socket, sys, time
port, count, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
connected = 0
start = time.monotonic()
for i in range(count):
    with socket.socket() as sock:
        sock.bind((sys.argv[4], 0))
        sock.setblocking(False)
        if sock.connect_ex((sys.argv[5], port)) in (0, errno.EINPROGRESS):
            _, w, _ = select.select([], [sock], [], 0.05)
            connected += bool(w) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    delay = start + (i + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(connected, flush=True)
"""


class Attacker:
    """One flood from the attacker's namespace: `go` starts it, `connected` waits for it."""

    def __init__(self, holder: int, port: int, count: int, rate: float) -> None:
        argv = [sys.executable, "-I", "-S", "-c", FLOOD, str(port), str(count), str(rate)]
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(holder), "-n", *argv, ATTACKER, SERVICE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert self.stdout.readline().strip() == "ready"

    def go(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()

    def connected(self) -> int:
        result = int(self.stdout.readline())
        self.proc.wait(timeout=30)
        return result


def ban(cfg_path: Path, *args: str) -> None:
    subprocess.run([WRAPALERT, "ban", *args, "-c", str(cfg_path)], check=False, capture_output=True)


def in_set() -> bool:
    done = subprocess.run(
        ["nft", "-j", "list", "set", "inet", "wrapalert", "ban4"],
        capture_output=True,
        text=True,
        check=False,
    )
    return ATTACKER in done.stdout


def write_config(base: Path, threshold: int) -> Path:
    path = base / "wrapalert.toml"
    path.write_text(
        f'[daemon]\nsocket = "{base}/notify.sock"\ncontrol_socket = "{base}/control.sock"\n'
        f'state_dir = "{base}/state"\nspool_dir = "{base}/spool"\ntrusted_uids = [0]\n'
        f'[digest]\ngroup_wait = "1h"\n'
        f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'
        f'[[sink]]\ntype = "nftables"\nthreshold = {threshold}\nban_for = "1h"\nscan = false\n'
    )
    return path


def phase(  # noqa: PLR0917 - a bench's one call site, in order
    state: str, group: Path, holder: int, port: int, cfg_path: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One phase: `per_phase` attempts (none when idle) at `rate`, then `settle`; its CPU
    per attempt in the service's cgroup and in the whole machine."""
    if state != "idle":
        ban(cfg_path, "del" if state == "open" else "add", ATTACKER)
        assert in_set() == (state == "banned")
    attacker = Attacker(holder, port, args.per_phase, args.rate) if state != "idle" else None
    time.sleep(0.5)
    usage0 = int((group / "cpuacct.usage").read_text())
    busy0 = busy_jiffies()
    if attacker is None:
        time.sleep(args.per_phase / args.rate)  # as long as a flood, for a baseline
        connected = 0
    else:
        attacker.go()
        connected = attacker.connected()
    # The same wait for every state: a refused sshd child sleeps 5 s in libwrap before it
    # exits, and its exit belongs to its own phase, not to the next one.
    time.sleep(args.settle)
    deadline = time.monotonic() + 30
    while len((group / "cgroup.procs").read_text().split()) > BASELINE_PROCS:
        assert time.monotonic() < deadline, "the refused children did not exit"
        time.sleep(0.05)
    usage = int((group / "cpuacct.usage").read_text()) - usage0
    busy = busy_jiffies() - busy0
    tick = 1000.0 / os.sysconf("SC_CLK_TCK")
    return {
        SERVICE_MS: usage / 1e6 / args.per_phase,
        "system_ms": busy * tick / args.per_phase,
        "connected": connected,
    }


def run_inside(args: argparse.Namespace) -> dict[str, object]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    base = Path(tempfile.mkdtemp(prefix="wa-ban-", dir="/tmp"))
    base.chmod(0o755)
    (base / "spool").mkdir()
    cfg_path = write_config(base, 10)
    cfg = config.load(cfg_path)
    group = CGROUP / f"wa-ban-{os.getpid()}"
    group.mkdir()
    with (base / "daemon.log").open("ab") as log:
        daemon = subprocess.Popen(
            [WRAPALERT, "run", "-c", str(cfg_path)], stdin=subprocess.DEVNULL, stderr=log
        )
    sshd = SshdOnService(base, "sshd")
    holder = None
    try:
        deadline = time.monotonic() + 30
        while not (base / "control.sock").exists():
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        holder = attacker_namespace()
        sshd.set_deny(hosts_deny_line(cfg, sys.executable, daemons="sshd", form="durable"))
        sshd.start()
        for pid in (sshd.pid, daemon.pid):
            (group / "cgroup.procs").write_text(str(pid))

        # The sink bans by itself: how many of 30 attempts still get through.
        first = Attacker(holder.pid, sshd.port, 30, args.rate)
        first.go()
        automatic = first.connected()
        assert in_set(), "the sink did not ban the flooding source"
        # Measure with bans made by hand only: a threshold no flood reaches, by a reload.
        write_config(base, 1_000_000)
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.0)

        phases: dict[str, list[dict[str, float]]] = {state: [] for state in STATES}
        for r in range(args.rounds):
            for state in STATES[r % 3 :] + STATES[: r % 3]:  # rotating order
                phases[state].append(phase(state, group, holder.pid, sshd.port, cfg_path, args))
        status = control.request(base / "control.sock", "status")["status"]
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        sshd.stop()
        daemon.terminate()
        daemon.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (group / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            group.rmdir()
        except OSError as exc:
            print(f"cgroup {group} left behind: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return {
        "automatic_connected_of_30": automatic,
        "phases": phases,
        "received": status["received"],
        "bans": status["bans"],
    }


def machine() -> dict[str, object]:
    def package(name: str) -> str:
        return tool_version(["dpkg-query", "-W", "-f", "${Version}", name]) or "missing"

    return bench_machine.machine(
        nft=tool_version(["nft", "--version"]) or "missing",
        sshd=package("openssh-server"),
        libwrap0=package("libwrap0"),
        loadavg=Path("/proc/loadavg").read_text().split()[:3],
    )


def markdown(report: dict[str, object], args: argparse.Namespace) -> str:
    m = report["machine"]
    assert isinstance(m, dict)
    phases = report["phases"]
    assert isinstance(phases, dict)
    med = {
        state: {key: statistics.median(p[key] for p in runs) for key in ("service_ms", "system_ms")}
        for state, runs in phases.items()
    }
    idle = med["idle"]
    rows = [
        f"| {state} | {med[state][SERVICE_MS]:.2f} | "
        f"{med[state][SERVICE_MS] - idle[SERVICE_MS]:.2f} | {med[state]['system_ms']:.1f} | "
        f"{med[state]['system_ms'] - idle['system_ms']:.1f} | "
        f"{', '.join(f'{p[SERVICE_MS]:.2f}' for p in phases[state])} | "
        f"{', '.join(str(int(p['connected'])) for p in phases[state])} |"
        for state in STATES
    ]
    added = {state: med[state][SERVICE_MS] - idle[SERVICE_MS] for state in ("open", "banned")}
    lines = [
        "# CPU per connection attempt from one source, before and after its ban",
        "",
        (
            f"{args.rounds} rounds x {args.per_phase} attempts per phase at {args.rate:g}/s, "
            f"open, banned and idle interleaved (order rotating), {m['date']}."
        ),
        (
            f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"{m['platform']}, Python {m['python']}; {m['nft']}; openssh-server {m['sshd']}, "
            f"libwrap0 {m['libwrap0']}."
        ),
        (
            f"Load average before/after: {m['loadavg']} / {report['loadavg_after']}. *service* "
            "is the cpuacct cgroup of sshd (its children, libwrap, the hook) and the daemon: "
            "only our processes. *system* is /proc/stat's busy time, which on a shared or "
            "virtualised machine also counts other work (and the attacker's own loop)."
        ),
        "",
        (
            "The sink banned the source by itself: of 30 attempts, "
            f"{report['automatic_connected_of_30']} connected (threshold 10; refusals reach the "
            "daemon through the hook a few ms after each connection, and the ban goes to the "
            "kernel in the next batch). Then bans were toggled by `wrapalert ban add|del` under "
            "a threshold no flood reaches (set by a reload)."
        ),
        "",
        (
            "CPU ms per attempt, median of rounds; *- idle*: minus the idle phase (no attempts, "
            "same duration), i.e. what the attempts themselves cost."
        ),
        "",
        (
            "| state | service | service - idle | system | system - idle "
            "| service per round | connected per round |"
        ),
        "|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        (
            f"- service CPU per attempt added by the flood: open {added['open']:.2f} ms, "
            f"banned {added['banned']:.3f} ms"
        ),
        f"- events the daemon received: {report['received']}; bans: {report['bans']}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-phase", type=int, default=40)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=6.0)
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        for why in (
            missing("sshd"),
            None if shutil.which("nft") else "nft is missing (apt-get install nftables)",
        ):
            if why:
                sys.exit(f"ban_cost: {why}")
        if not CGROUP.is_dir():
            sys.exit(f"ban_cost: {CGROUP} is missing (a cgroup v1 cpuacct hierarchy)")
        env = os.environ | {INSIDE: "1"}
        # Re-run inside a private network namespace: nothing here touches the host's.
        os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)  # noqa: S606
    before = machine()
    report: dict[str, object] = {"machine": before, **run_inside(args)}
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["settings"] = vars(args)
    out = ROOT / "bench" / "results"
    (out / "ban_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, args)
    (out / "ban_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
