"""The daemon's spool pass over 100,000 dot files, next to baselines measured in the same run.

Issue 15: a local user can fill the shared spool with dot files dated in the
year 2100 (which the old sweep never removed) and the old pass ran in the
event loop, about 0.6 s per pass over 100,000 of them. This measures:

  scandir_100k       baseline: one plain `os.scandir` listing of the 100,000 entries
  scan_empty         Spool.scan over an empty spool (and root's own dir)
  scan_100k_fresh    Spool.scan over 100,000 dot files a client could be writing (kept:
                     the steady cost while an attacker keeps them fresh)
  clear_100k_future  passes until 100,000 dot files dated 2100 are gone (each pass
                     sweeps at most SWEEP_BATCH), and the time they take in all
  loop_lag_thread    the longest an event loop's 1 ms ticker waited while the
                     daemon's pass over 100,000 fresh dot files ran in a thread
                     (Spool.run's way); loop_lag_idle is the same ticker with no pass
  loop_lag_inline    the same pass run in the loop itself (the old way), for contrast

Run as root (the pass makes root's own spool dir). Usage:
python bench/spool_scan.py [--files N] [--repeat N] [--dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wrapalert.clock import SYSTEM  # noqa: E402 - after the path above
from wrapalert.daemon import spool as spool_mod  # noqa: E402
from wrapalert.daemon.activity import Activity  # noqa: E402
from wrapalert.daemon.intake import Intake  # noqa: E402
from wrapalert.daemon.stats import Stats  # noqa: E402
from wrapalert.daemon.store import Store  # noqa: E402
from wrapalert.daemon.twins import Twins  # noqa: E402
from wrapalert.daemon.witness import Witness  # noqa: E402
from wrapalert.model import Event  # noqa: E402

YEAR_2100 = 4102444800


def fill(directory: Path, count: int, *, future: bool) -> None:
    for i in range(count):
        path = directory / f".x{i}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if future:
            os.utime(path, (YEAR_2100, YEAR_2100))


def empty(directory: Path) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                Path(entry.path).unlink()


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


async def lag_during(work: Callable[[], object] | None, *, inline: bool) -> float:
    """The longest a 1 ms ticker in this loop waited beyond its sleep while `work` ran."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    if work is None:
        await asyncio.sleep(0.5)
    elif inline:
        work()
        await asyncio.sleep(0.01)
    else:
        await asyncio.to_thread(work)
    done.set()
    await task
    return worst


def machine(directory: Path) -> dict[str, object]:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(directory)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "filesystem": fs or "unknown",
    }


class Nowhere:
    """Where the pass's events go (intake.Target): root trusted, the events dropped."""

    trusted_uids = frozenset({0})

    @staticmethod
    def accept(_event: Event) -> None:
        return None


class NoCanary:
    """No canary run open: intake claims nothing for it."""

    expected: dict[tuple[str, str, str], object] = {}  # noqa: RUF012 - never written

    @staticmethod
    def claims(_fields: dict[str, str]) -> bool:
        return False


def idle_intake(sock: socket.socket) -> Intake:
    """An intake for the pass to hand its files to; the events go nowhere."""
    stats = Stats()
    return Intake(
        sock,
        target=Nowhere(),
        stats=stats,
        twins=Twins(),
        witness=Witness(stats, time.time),
        canary=NoCanary(),
        activity=Activity(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to make the spool")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the pass makes root's own spool dir")

    work = Path(tempfile.mkdtemp(prefix="wa-spool-bench-", dir=args.dir))
    path = work / "spool"
    path.mkdir(mode=0o1777)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    intake = idle_intake(a)
    spool = spool_mod.Spool(
        path, intake=intake, store=Store(work / "state"), commit=lambda: True, clock=SYSTEM
    )
    spool.ensure()
    results: dict[str, object] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:

        def one_pass() -> None:
            spool.scan(time.time(), set())

        empty_times = timed(one_pass, args.repeat)
        fill(path, args.files, future=False)
        scandir_times = timed(lambda: list(os.scandir(path)), args.repeat)
        fresh_times = timed(one_pass, args.repeat)
        assert sum(1 for _ in os.scandir(path)) == args.files + 1  # nothing fresh removed
        lag_idle = asyncio.run(lag_during(None, inline=False))
        lag_thread = asyncio.run(lag_during(one_pass, inline=False))
        lag_inline = asyncio.run(lag_during(one_pass, inline=True))
        empty(path)

        fill(path, args.files, future=True)
        passes, swept = 0, 0
        start = time.perf_counter()
        while any(e.name.startswith(".") for e in os.scandir(path)):
            result = spool.scan(time.time(), set())
            swept += result.rejected["stale_spool_file"]
            passes += 1
        clear = time.perf_counter() - start
        assert swept == args.files

        base = statistics.median(scandir_times)
        results = {
            "files": args.files,
            "repeat": args.repeat,
            "scandir_100k_s": base,
            "scan_empty_s": statistics.median(empty_times),
            "scan_100k_fresh_s": statistics.median(fresh_times),
            "scan_100k_fresh_ratio": statistics.median(fresh_times) / base,
            "clear_100k_future_s": clear,
            "clear_100k_future_passes": passes,
            "clear_100k_future_ratio": clear / base,
            "sweep_batch": spool_mod.SWEEP_BATCH,
            "loop_lag_idle_ms": lag_idle * 1e3,
            "loop_lag_thread_ms": lag_thread * 1e3,
            "loop_lag_inline_ms": lag_inline * 1e3,
        }
    finally:
        a.close()
        b.close()
        shutil.rmtree(work)
    report: dict[str, object] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(args.dir or Path(tempfile.gettempdir())),
        "loadavg": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spool_scan.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "spool_scan.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, object]) -> str:
    r = report["results"]
    m = report["machine"]
    assert isinstance(r, dict)
    assert isinstance(m, dict)
    base = r["scandir_100k_s"]
    rows = [
        ("os.scandir listing (baseline)", r["scandir_100k_s"], 1.0),
        ("Spool.scan, empty spool", r["scan_empty_s"], r["scan_empty_s"] / base),
        (
            f"Spool.scan, {r['files']:,} fresh dot files",
            r["scan_100k_fresh_s"],
            r["scan_100k_fresh_ratio"],
        ),
        (
            f"clear {r['files']:,} dot files dated 2100 ({r['clear_100k_future_passes']} passes)",
            r["clear_100k_future_s"],
            r["clear_100k_future_ratio"],
        ),
    ]
    lines = [
        f"# Spool pass over {r['files']:,} dot files",
        "",
        f"{report['when']}; medians of {r['repeat']} runs where repeated.",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, {m['platform']},",
        f"Python {m['python']}, spool on {m['filesystem']}.",
        f"Load average before/after: {report['loadavg']}.",
        "",
        "| case | seconds | ratio to the scandir baseline |",
        "|---|---:|---:|",
        *(f"| {name} | {secs:.4f} | {ratio:.2f} |" for name, secs, ratio in rows),
        "",
        "Event-loop stall (longest extra wait of a 1 ms ticker) during one pass over the",
        "fresh dot files:",
        "",
        "| how the pass runs | worst lag ms |",
        "|---|---:|",
        f"| no pass (idle loop, baseline) | {r['loop_lag_idle_ms']:.2f} |",
        f"| in a thread (Spool.run) | {r['loop_lag_thread_ms']:.2f} |",
        f"| in the loop (the old way) | {r['loop_lag_inline_ms']:.2f} |",
        "",
        (
            f"Each pass sweeps at most {r['sweep_batch']:,} dot files and reads at most "
            f"{spool_mod.SPOOL_BATCH:,} spool files."
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
