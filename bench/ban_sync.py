"""The ban table kept in step at max_bans: what a re-sync, a reconcile and a ban cost.

In a private network namespace (the script re-executes itself under
`unshare -n`), the daemon's own kernel side (daemon/bankernel.py with the
nftables sink) keeps a table of N bans, half IPv4 addresses, half IPv6 /64s
(the common case; the /128 set is a hash set too), for each N:

  reboot     the table is gone: reconcile declares it and adds every ban
  restart    the table is kept, a new daemon: the marker is rewritten, nothing else
  steady     a reconcile that finds the table in step (every `reconcile` seconds)
  check      a comparison without repair (`wrapalert status`, `test-alert`)
  ban        one new ban into the N (the fast path, no listing)

Each with its wall time, against nft's per-run limit (sinks/nftables.TIMEOUT),
and the longest the event loop went without running a 5 ms ticker during it
(the parsing and comparing run in a thread: intake must not stall).
Median of --rounds rounds.

Usage: python bench/ban_sync.py [--rounds N] [--sizes 10000,100000]
Writes ban_sync.json and ban_sync.md to bench/results/. Needs root and nftables.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import machine as bench_machine
from machine import tool_version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wrapalert.bantable import Owner  # noqa: E402 - after the path is set up
from wrapalert.daemon.bankernel import KernelSync  # noqa: E402
from wrapalert.daemon.stats import Stats  # noqa: E402
from wrapalert.daemon.store import Store  # noqa: E402
from wrapalert.sinks.nftables import TIMEOUT, NftablesSink, NftablesSinkConfig  # noqa: E402

INSIDE = "WRAPALERT_BAN_SYNC_NETNS"
OPS = ("reboot", "restart", "steady", "check", "ban")


def bans(n: int, until: float) -> dict[str, float]:
    want: dict[str, float] = {}
    for i in range(n):
        if i % 2:
            want[str(ipaddress.IPv4Address(0x0A000000 + i))] = until
        else:
            want[f"{ipaddress.IPv6Address((0x20010DB8 << 96) + (i << 64))}/64"] = until
    return want


async def timed(job: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall seconds of `job`, longest gap of a 5 ms ticker meanwhile, in ms)."""
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst = max(worst, (now - last) * 1000)
            last = now

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    await job()
    wall = time.perf_counter() - start
    stop.set()
    await tick
    return wall, worst


async def round_for(n: int, state: Path) -> dict[str, tuple[float, float]]:
    now = time.time()
    want = bans(n, now + 3600)
    sink = NftablesSink(NftablesSinkConfig(table="bench"))
    store = Store(state)
    got: dict[str, tuple[float, float]] = {}
    kernel = KernelSync(store, Stats())
    kernel.configure(sink)
    got["reboot"] = await timed(lambda: kernel.reconcile(want, time.time()))
    again = KernelSync(store, Stats())
    again.me = Owner(again.me.pid, again.me.start + 1)  # another daemon's marker: rewritten
    again.configure(sink)
    got["restart"] = await timed(lambda: again.reconcile(want, time.time()))
    got["steady"] = await timed(lambda: again.reconcile(want, time.time()))
    got["check"] = await timed(lambda: again.check(want, time.time()))
    got["ban"] = await timed(lambda: again.add({"203.0.113.7": 3600.0}))
    return got


def run_inside(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        str(n): {op: [] for op in OPS} for n in sizes
    }
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in sizes if r % 2 == 0 else reversed(sizes):
                subprocess.run(["nft", "flush", "ruleset"], check=True)
                got = asyncio.run(round_for(n, Path(tmp)))
                for op, sample in got.items():
                    samples[str(n)][op].append(sample)
                print(f"round {r + 1} size {n}", file=sys.stderr, flush=True)
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    medians = {
        n: {
            op: [statistics.median(s[0] for s in got), statistics.median(s[1] for s in got)]
            for op, got in ops.items()
        }
        for n, ops in samples.items()
    }
    return {
        "machine": bench_machine.machine(
            nft=tool_version(["nft", "--version"]),
            load_before=load_before,
            load_after=Path("/proc/loadavg").read_text().split()[:3],
        ),
        "rounds": args.rounds,
        "sizes": sizes,
        "nft_timeout_s": TIMEOUT,
        "medians": medians,
        "samples": samples,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# The ban table kept in step, by the daemon's own kernel side",
        "",
        f"{report['rounds']} rounds, sizes alternating in order, {m['date']}.",
        (
            f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"{m['platform']}, Python {m['python']}; {m['nft']}."
        ),
        f"Load average before/after: {m['load_before']} / {m['load_after']}.",
        "",
        (
            "Half IPv4 addresses, half IPv6 /64s. Wall seconds (median), and in brackets the "
            "longest the event loop did not run a 5 ms ticker meanwhile (ms). "
            f"nft's limit per run: {report['nft_timeout_s']:g} s."
        ),
        "",
        "| bans | reboot re-sync | restart | steady reconcile | check | one ban |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (str(s) for s in report["sizes"]):
        cells = [
            f"{report['medians'][n][op][0]:.3f} ({report['medians'][n][op][1]:.0f})" for op in OPS
        ]
        lines.append(f"| {int(n):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        if os.geteuid() != 0:
            sys.exit("ban_sync: needs root (a private network namespace and nftables)")
        env = os.environ | {INSIDE: "1"}
        os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)  # noqa: S606
    report = run_inside(args)
    out = ROOT / "bench" / "results"
    (out / "ban_sync.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ban_sync.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
