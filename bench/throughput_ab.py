"""Flood throughput of two builds of the daemon, interleaved in one run (an A/B of a change).

Each round runs, for each scenario of bench/throughput.py (few, distinct), the bare
recvmsg baseline and then each variant's `wrapalert run` (A: the given other build,
e.g. a checkout of main with its own venv; B: this tree), alternating which goes
first from round to round, so a busy shared machine weighs on both alike. Reported
per variant: the ratio daemon / baseline of each run (the baseline measured just
before it), their median, and the daemon's CPU per event.

Usage: python bench/throughput_ab.py --a /path/to/other/.venv/bin/wrapalert
       [--a-label main] [--b-label branch] [--rounds 3] [--count N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import throughput
from throughput import ROOT, baseline, daemon, machine

QLEN = int(throughput.QLEN.read_text())


def one(scenario: str, count: int, wrapalert: str) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="wa-bench-ab-", dir="/tmp"))
    try:
        bare = baseline(base / "baseline.sock", scenario, count)
        throughput.WRAPALERT = wrapalert
        run = daemon(base, scenario, count)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "baseline_events_per_s": bare["events_per_s"],
        "daemon_events_per_s": run["events_per_s"],
        "ratio": run["events_per_s"] / bare["events_per_s"],
        "cpu_us_per_event": run["cpu_us_per_event"],
        "lost": run["lost"],
    }


def markdown(
    results: dict[str, dict[str, list[dict[str, float]]]],
    info: dict[str, object],
    count: int,
    variants: dict[str, str],
) -> str:
    lines = [
        "# Daemon flood throughput, A/B",
        "",
        (
            f"{count:,} datagrams per run, {info['date']}. Machine: {info['cpu_model']}, "
            f"{info['nproc']} CPUs, {info['platform']}, Python {info['python']}; "
            f"net.unix.max_dgram_qlen {QLEN}."
        ),
        "",
        *(f"- {name}: `{path}`" for name, path in variants.items()),
        "",
        (
            "| scenario | variant | ratios to the bare loop (each run) | median ratio "
            "| median CPU us/event | lost |"
        ),
        "|---|---|---|---:|---:|---:|",
    ]
    for scenario, by_variant in results.items():
        for name, runs in by_variant.items():
            ratios = ", ".join(f"{r['ratio']:.3f}" for r in runs)
            lines.append(
                f"| {scenario} | {name} | {ratios} | "
                f"{statistics.median(r['ratio'] for r in runs):.3f} | "
                f"{statistics.median(r['cpu_us_per_event'] for r in runs):.1f} | "
                f"{sum(r['lost'] for r in runs):,.0f} |"
            )
    lines += [
        "",
        (
            "Each run's ratio is the daemon's events/s over a bare Python recvmsg loop's, "
            "measured just before it with the same sender; variants alternate which goes "
            "first from round to round. Sender and daemon share the machine's cores."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--a", required=True, help="the other build's wrapalert script")
    parser.add_argument("--a-label", default="A", help="what the other build is (a commit)")
    parser.add_argument("--b-label", default="B", help="what this tree is")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default="throughput_ab", help="results file name")
    args = parser.parse_args()
    variants = {
        args.a_label: args.a,
        args.b_label: str(Path(sys.executable).with_name("wrapalert")),
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {v: [] for v in variants} for s in ("few", "distinct")
    }
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for scenario in results:
            for name in order:
                row = one(scenario, args.count, variants[name])
                results[scenario][name].append(row)
                print(json.dumps({"round": round_, "scenario": scenario, name: row}), flush=True)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps(
            {
                "count": args.count,
                "qlen": QLEN,
                "machine": info,
                "variants": variants,
                "results": results,
            },
            indent=2,
        )
    )
    report = markdown(results, info, args.count, variants)
    (args.out / f"{args.name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
