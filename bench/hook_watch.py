"""The hook watch's cost: an idle daemon's CPU with the watch on against one with it off,
and the CPU of one check (what a change of hosts.allow or hosts.deny costs).

Two `wrapalert run` daemons run side by side for the whole measurement, one with
`[hook] watch = true` over tables of their own (this host's hosts.allow and
hosts.deny, or a small pair, plus this installation's line), one with it off; both
idle. Every window both processes' CPU (utime + stime from /proc, in clock ticks)
is read at its start and end, so the two variants share every second of machine
load. Then the check alone (hookcheck through the watch's own `table_problems`) is
timed in this process, `--checks` times per round.

Writes hook_watch.json and hook_watch.md to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine as bench_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wrapalert import checkhosts, config  # noqa: E402 - after the path is set up
from wrapalert.cli import hosts_deny_line  # noqa: E402
from wrapalert.daemon.hookwatch import read_table, table_problems  # noqa: E402
from wrapalert.hostsdeny import Install  # noqa: E402

WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
TICK = os.sysconf("SC_CLK_TCK")


def write_config(base: Path, *, watch: bool) -> Path:
    allow, deny = base / "hosts.allow", base / "hosts.deny"
    path = base / "wrapalert.toml"
    path.write_text(
        f'[daemon]\nsocket = "{base}/notify.sock"\ncontrol_socket = "{base}/control.sock"\n'
        f'state_dir = "{base}/state"\nspool_dir = "{base}/spool"\n\n'
        f'[hook]\nwatch = {"true" if watch else "false"}\nhosts_allow = "{allow}"\n'
        f'hosts_deny = "{deny}"\nquiet_after = "0"\n\n'
        f'[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'
    )
    cfg = config.load(path)
    line = hosts_deny_line(cfg, sys.executable, form="durable")
    own_allow = Path("/etc/hosts.allow")
    own_deny = Path("/etc/hosts.deny")
    allow.write_bytes(own_allow.read_bytes() if own_allow.exists() else b"")
    deny.write_bytes((own_deny.read_bytes() if own_deny.exists() else b"") + f"{line}\n".encode())
    return path


def cpu_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def start(path: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [WRAPALERT, "run", "-c", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (path.parent / "control.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon of {path} did not start")
        time.sleep(0.1)
    return proc


def check_cost(base: Path, checks: int) -> float:
    """CPU seconds of one check of the on-daemon's tables (median of the calls' mean)."""
    cfg = config.load(base / "wrapalert.toml")
    installation = checkhosts.Installation.of(
        Install.here(sys.executable, cfg.daemon.socket, cfg.daemon.spool_dir)
    )
    allow, deny = read_table(cfg.hook.hosts_allow), read_table(cfg.hook.hosts_deny)
    cpu = time.process_time()
    for _ in range(checks):
        problems = table_problems(allow, deny, installation, ["sshd"])
    assert problems == [], problems  # the tables hold this installation's line
    return (time.process_time() - cpu) / checks


def run(args: argparse.Namespace) -> dict[str, object]:
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    work = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    bases = {"on": work / "on", "off": work / "off"}
    procs = {}
    samples: dict[str, list[float]] = {"on": [], "off": []}
    checks: list[float] = []
    try:
        for name, base in bases.items():
            base.mkdir()
            procs[name] = start(write_config(base, watch=name == "on"))
        time.sleep(5)  # start-up done (the first check, the link check)
        for _ in range(args.rounds):
            before = {name: cpu_ticks(p.pid) for name, p in procs.items()}
            time.sleep(args.window)
            for name, p in procs.items():
                ticks = cpu_ticks(p.pid) - before[name]
                samples[name].append(ticks / TICK / args.window * 60 * 1000)  # ms per minute
            checks.append(check_cost(bases["on"], args.checks) * 1e3)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return {
        "machine": bench_machine.machine(
            load_before=load_before, load_after=Path("/proc/loadavg").read_text().split()[:3]
        ),
        "rounds": args.rounds,
        "window_s": args.window,
        "checks": args.checks,
        "cpu_ms_per_minute": samples,
        "medians_ms_per_minute": medians,
        "check_ms": checks,
        "check_ms_median": statistics.median(checks),
        "table_bytes": {
            "allow": (
                Path("/etc/hosts.allow").stat().st_size if Path("/etc/hosts.allow").exists() else 0
            ),
            "deny": (
                Path("/etc/hosts.deny").stat().st_size if Path("/etc/hosts.deny").exists() else 0
            ),
        },
    }


def markdown(report: dict[str, object]) -> str:
    m: dict[str, object] = report["machine"]  # type: ignore[assignment]
    med: dict[str, float] = report["medians_ms_per_minute"]  # type: ignore[assignment]
    tables: dict[str, int] = report["table_bytes"]  # type: ignore[assignment]
    lines = [
        "# The hook watch's cost",
        "",
        (
            f"Two idle `wrapalert run` daemons side by side, watch on and off, CPU read from "
            f"/proc over {report['rounds']} windows of {report['window_s']} s each, {m['date']}. "
            f"Tables: this host's hosts.allow ({tables['allow']} bytes) and hosts.deny "
            f"({tables['deny']} bytes) plus the durable line."
        ),
        (
            f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"Python {m['python']}."
        ),
        f"Load average before/after: {m['load_before']} / {m['load_after']}.",
        "",
        "| daemon | CPU ms per minute, idle (median) |",
        "|---|---:|",
        f"| watch off | {med['off']:.1f} |",
        f"| watch on (two reads every 2 s, a check every 60 s) | {med['on']:.1f} |",
        f"| difference | {med['on'] - med['off']:.1f} |",
        "",
        (
            f"One check of the tables (the linter and the modelled libwrap decision, run on "
            f"start, on each change and every 60 s): {report['check_ms_median']:.2f} ms CPU "
            f"(median of {report['rounds']} rounds of {report['checks']})."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--checks", type=int, default=20)
    args = parser.parse_args()
    report = run(args)
    out = ROOT / "bench" / "results"
    (out / "hook_watch.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "hook_watch.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
