"""What nft costs against set size: the numbers behind the ban sets' layout and max_bans.

In a private network namespace (the script re-executes itself under
`unshare -n`), for each set variant and size, on a fresh table:

  fill     declare the set, then add N elements in one command: the re-sync
           after a reboot (the table is gone, every ban goes back)
  list     `nft -j list set` of N elements: what each reconcile reads
  add1     add one element to N: one ban
  add100   add 100 elements to N in one command: a batch of bans
  del1     delete one element of N: `wrapalert ban del`
  del100   delete 100 elements of N in one command
  percmd   add N elements with one command each, as add+delete+add (what the
           sink sent before, so that a renewed ban got its new timeout): only
           for sizes up to --percmd-max, it grows too fast

Variants (the set declarations the sink can choose from):

  v4      ipv4_addr, flags timeout (a hash set of addresses)
  v4int   ipv4_addr, flags interval,timeout, /24 prefixes
  v6net   ipv6_addr, flags timeout, /64 network addresses (matched with
          `ip6 saddr & ffff:ffff:ffff:ffff:: @set`)
  v6int   ipv6_addr, flags interval,timeout, /64 prefixes (the set before)

Wall time of each nft run and its CPU (user + system of the child, where the
kernel's netlink work is counted), median over --rounds rounds, variants
interleaved in a rotating order. Ratios compare variants measured in the
same run: interval / hash of one family, per-command / one command.

Usage: python bench/nft_cost.py [--rounds N] [--sizes 1000,10000,...] [--percmd-max N]
Writes nft_cost.json and nft_cost.md to bench/results/. Needs root and nftables.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import machine as bench_machine
from machine import tool_version

ROOT = Path(__file__).resolve().parent.parent
INSIDE = "WRAPALERT_NFT_BENCH_NETNS"
TABLE = {"family": "inet", "table": "bench"}
VARIANTS = ("v4", "v4int", "v6net", "v6int")
OPS = ("fill", "list", "add1", "add100", "del1", "del100", "percmd")
TIMEOUT = 300.0  # seconds one nft run may take here (the sink allows 10)


def nft(payload: dict[str, Any] | None, *args: str) -> tuple[float, float]:
    """Run nft once; (wall seconds, CPU seconds of the child). Raises on failure."""
    argv = ["nft", *(args or ("-j", "-f", "-"))]
    data = None if payload is None else json.dumps(payload).encode()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, input=data, capture_output=True, timeout=TIMEOUT, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)}: {done.stderr.decode()[:300]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def value(variant: str, i: int) -> Any:
    """The i-th element's value: distinct, spread like real sources."""
    if variant == "v4":
        return str(ipaddress.IPv4Address(0x0A000000 + i * 7919 % (1 << 24)))
    if variant == "v4int":
        return {"prefix": {"addr": str(ipaddress.IPv4Address(0x0A000000 + (i << 8))), "len": 24}}
    net = str(ipaddress.IPv6Address((0x20010DB8 << 96) + (i << 64)))
    if variant == "v6net":
        return net
    return {"prefix": {"addr": net, "len": 64}}


def declare(variant: str) -> dict[str, Any]:
    kind = "ipv4_addr" if variant.startswith("v4") else "ipv6_addr"
    flags = ["interval", "timeout"] if variant.endswith("int") else ["timeout"]
    return {
        "nftables": [
            {"add": {"table": {"family": "inet", "name": TABLE["table"]}}},
            {"add": {"set": {**TABLE, "name": "s", "type": kind, "flags": flags}}},
        ]
    }


def elements(verb: str, values: list[Any], timeout: int | None = 3600) -> dict[str, Any]:
    elem = values if timeout is None else [{"elem": {"val": v, "timeout": timeout}} for v in values]
    return {"nftables": [{verb: {"element": {**TABLE, "name": "s", "elem": elem}}}]}


def per_command(values: list[Any]) -> dict[str, Any]:
    """The old shape: per element add, delete, then add with its timeout, each a command."""
    commands: list[dict[str, Any]] = []
    for v in values:
        commands.append({"add": {"element": {**TABLE, "name": "s", "elem": [v]}}})
        commands.append({"delete": {"element": {**TABLE, "name": "s", "elem": [v]}}})
    commands += [
        {
            "add": {
                "element": {**TABLE, "name": "s", "elem": [{"elem": {"val": v, "timeout": 3600}}]}
            }
        }
        for v in values
    ]
    return {"nftables": commands}


def fresh() -> None:
    subprocess.run(["nft", "flush", "ruleset"], check=True, timeout=TIMEOUT)


def measure(variant: str, size: int, percmd_max: int) -> dict[str, tuple[float, float]]:
    """Every op once for one variant and size, on a fresh table."""
    got: dict[str, tuple[float, float]] = {}
    values = [value(variant, i) for i in range(size + 300)]
    base, extra = values[:size], values[size:]
    fresh()
    declare_cost = nft(declare(variant))
    fill = nft(elements("add", base))
    got["fill"] = (declare_cost[0] + fill[0], declare_cost[1] + fill[1])
    got["list"] = nft(None, "-j", "list", "set", "inet", TABLE["table"], "s")
    got["add1"] = nft(elements("add", extra[:1]))
    got["add100"] = nft(elements("add", extra[100:200]))
    got["del1"] = nft(elements("delete", extra[:1], None))
    got["del100"] = nft(elements("delete", extra[100:200], None))
    if size <= percmd_max:
        fresh()
        nft(declare(variant))
        got["percmd"] = nft(per_command(base))
    return got


def run_inside(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    samples: dict[str, dict[str, dict[str, list[list[float]]]]] = {
        v: {str(n): {op: [] for op in OPS} for n in sizes} for v in VARIANTS
    }
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for size in sizes:
            for variant in order:
                for op, (wall, cpu) in measure(variant, size, args.percmd_max).items():
                    samples[variant][str(size)][op].append([wall, cpu])
                print(f"round {r + 1} {variant} {size}", file=sys.stderr, flush=True)
    fresh()
    medians = {
        v: {
            n: {
                op: [statistics.median(s[0] for s in got), statistics.median(s[1] for s in got)]
                for op, got in ops.items()
                if got
            }
            for n, ops in by_size.items()
        }
        for v, by_size in samples.items()
    }
    return {
        "machine": bench_machine.machine(
            nft=tool_version(["nft", "--version"]),
            load_before=load_before,
            load_after=Path("/proc/loadavg").read_text().split()[:3],
        ),
        "rounds": args.rounds,
        "sizes": sizes,
        "medians_s": medians,
        "samples_s": samples,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    med = report["medians_s"]
    lines = [
        "# nft cost against set size, per set variant",
        "",
        f"{report['rounds']} rounds, variants interleaved (rotating order), {m['date']}.",
        (
            f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
            f"{m['platform']}, Python {m['python']}; {m['nft']}."
        ),
        f"Load average before/after: {m['load_before']} / {m['load_after']}.",
        "",
        "Wall ms of one nft run (CPU ms of the child in brackets), median of rounds.",
        (
            "fill = declare + add N in one command; list = `nft -j list set`; add/del k = k "
            "elements in one command into/from a set of N; percmd = N elements, one command "
            "each (add+delete+add, the sink's old shape)."
        ),
        "",
        "| variant | N | fill | list | add1 | add100 | del1 | del100 | percmd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        for n in (str(s) for s in report["sizes"]):
            cells = []
            for op in OPS:
                got = med[variant][n].get(op)
                cells.append("-" if got is None else f"{got[0] * 1000:.1f} ({got[1] * 1000:.1f})")
            lines.append(f"| {variant} | {int(n):,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Ratios of wall time, same run: interval set / hash set of the same family "
            "(v6int / v6net, v4int / v4), and per-command / one command (percmd / fill)."
        ),
        "",
        "| N | op | v6int / v6net | v4int / v4 |",
        "|---:|---|---:|---:|",
    ]
    for n in (str(s) for s in report["sizes"]):
        for op in ("fill", "list", "add1", "add100", "del1"):
            r6 = med["v6int"][n][op][0] / med["v6net"][n][op][0]
            r4 = med["v4int"][n][op][0] / med["v4"][n][op][0]
            lines.append(f"| {int(n):,} | {op} | {r6:.1f}x | {r4:.1f}x |")
    lines += ["", "| N | variant | percmd / fill |", "|---:|---|---:|"]
    for n in (str(s) for s in report["sizes"]):
        for variant in VARIANTS:
            got = med[variant][n]
            if "percmd" in got:
                ratio = got["percmd"][0] / got["fill"][0]
                lines.append(f"| {int(n):,} | {variant} | {ratio:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000,50000,100000")
    parser.add_argument("--percmd-max", type=int, default=10000)
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        if os.geteuid() != 0:
            sys.exit("nft_cost: needs root (a private network namespace and nftables)")
        env = os.environ | {INSIDE: "1"}
        os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)  # noqa: S606
    report = run_inside(args)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nft_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "nft_cost.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
