"""What re-reading the host's addresses and the logged-in sessions costs per ban decision.

shield.py reads them at every decision (a source reaching the threshold), so
an address the host gains, or a session that starts, protects at once. This
measures that read against the rule's own allowlist check (the baseline, run
in the same loop), each variant in turn within every round:

  rule        BanRule.allowed: the configured allowlist (pure, no I/O)
  netlink     hostaddr.netlink_addresses: one RTM_GETADDR dump
  proc        hostaddr.proc_addresses: /proc/self/net (the fallback)
  logind      sessions.logind_peers over --sessions real-format files in a temp dir
  utmp        sessions.utmp_peers over --sessions records (utmpdump's format)
  shield      Shield.check: netlink, then logind and utmp only if their files changed
              (they did not here: a steady state), and the overlap tests

Wall and CPU microseconds per call (median of rounds, --calls calls a round).
Each decision is one call of `shield`; decisions are rare (one per source that
reaches the threshold, remembered for ban_for or window afterwards).

Usage: python bench/host_reads.py [--rounds N] [--calls N] [--sessions N]
Writes host_reads.json and host_reads.md to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import machine as bench_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wrapalert import hostaddr, sessions  # noqa: E402 - after the path is set up
from wrapalert.banrule import BanRule, normalise_allow  # noqa: E402
from wrapalert.shield import Shield  # noqa: E402

SESSION = """\
UID=0
USER=root
ACTIVE=1
STATE=active
REMOTE=1
TYPE=tty
CLASS=user
SCOPE=session-{n}.scope
REMOTE_HOST=198.51.{hi}.{lo}
SERVICE=sshd
LEADER={n}
"""
# glibc's struct utmp: type 7 (USER_PROCESS), pid, line, id, user, host, ..., addr_v6
RECORD = sessions.UTMP_RECORD


def fixtures(base: Path, count: int) -> tuple[Path, Path]:
    directory = base / "sessions"
    directory.mkdir()
    records = []
    for n in range(count):
        text = SESSION.format(n=n, hi=100 + n // 250, lo=n % 250 + 1)
        (directory / f"c{n}").write_text(text)
        addr = bytes([198, 51, 100 + n // 250, n % 250 + 1]) + bytes(12)
        records.append(
            RECORD.pack(7, 1000 + n, b"pts/1", b"ts/1", b"root", b"", 0, 0, 0, 0, 0, addr, b"")
        )
    utmp = base / "utmp"
    utmp.write_bytes(b"".join(records))
    return directory, utmp


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        directory, utmp = fixtures(Path(tmp), args.sessions)
        rule = BanRule(allow=normalise_allow(["192.0.2.0/24", "2001:db8::/32"]))
        shield = Shield(sessions_dir=directory, utmp=utmp)
        variants: dict[str, Callable[[], object]] = {
            "rule": lambda: rule.allowed("203.0.113.7"),
            "netlink": hostaddr.netlink_addresses,
            "proc": hostaddr.proc_addresses,
            "logind": lambda: sessions.logind_peers(directory),
            "utmp": lambda: sessions.utmp_peers(utmp),
            "shield": lambda: shield.check("203.0.113.7"),
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        for _ in range(args.rounds):
            for name, call in variants.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    call()
                samples[name].append(
                    (
                        (time.perf_counter() - wall) / args.calls * 1e6,
                        (time.process_time() - cpu) / args.calls * 1e6,
                    )
                )
    medians = {
        name: (statistics.median(s[0] for s in got), statistics.median(s[1] for s in got))
        for name, got in samples.items()
    }
    return {
        "machine": bench_machine.machine(
            load_before=load_before, load_after=Path("/proc/loadavg").read_text().split()[:3]
        ),
        "rounds": args.rounds,
        "calls": args.calls,
        "sessions": args.sessions,
        "medians_us": medians,
        "samples_us": samples,
    }


def markdown(report: dict[str, object]) -> str:
    m: dict[str, object] = report["machine"]  # type: ignore[assignment]
    med: dict[str, tuple[float, float]] = report["medians_us"]  # type: ignore[assignment]
    base = med["rule"][0]
    lines = [
        "# The host's addresses and sessions, read per ban decision",
        "",
        (
            f"{report['rounds']} rounds of {report['calls']} calls per variant, variants in "
            f"turn, {report['sessions']} logind sessions and as many utmp records, {m['date']}."
        ),
        (
            f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"Python {m['python']}."
        ),
        f"Load average before/after: {m['load_before']} / {m['load_after']}.",
        "",
        "| variant | wall µs per call | CPU µs per call | wall vs rule |",
        "|---|---:|---:|---:|",
    ]
    for name, (wall, cpu) in med.items():
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / base:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    report = run(args)
    out = ROOT / "bench" / "results"
    (out / "host_reads.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "host_reads.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
