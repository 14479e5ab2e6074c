"""What `wrapalert explain`'s memory costs: per event in the pipeline, and in bytes.

The sight stage (pipeline/chain.py) runs first for every accepted event and
updates daemon/sightings.py's memories. Measured in one process, the same
events through the same pipeline built twice, with and without the stage (the
baseline), the two interleaved round by round so a busy shared machine weighs
on both alike:

  few       10 sources, 3 daemons, tcp (a flood from a handful of hosts)
  distinct  every event a new address (a spread flood; past 8,192 sources each
            event also forgets the oldest)

Reported: CPU microseconds per event of each (process time, median of rounds)
and their ratio. Then the memory, by tracemalloc: the sightings filled to every
bound (8,192 verified, 4,096 unverified and 1,024 untrusted sources; one daemon
each, and the worst case of 8 daemons each), and the ban history at its bound
(20,000 targets; one ban each, and the worst case of 16).

Usage: python bench/sightings.py [--rounds N] [--events N]
Writes sightings.json and sightings.md to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import machine as bench_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wrapalert import config  # noqa: E402 - after the path is set up
from wrapalert.daemon import banhistory, sightings  # noqa: E402
from wrapalert.daemon.banhistory import BanHistory  # noqa: E402
from wrapalert.daemon.ledger import Ledger  # noqa: E402
from wrapalert.daemon.silences import Silences  # noqa: E402
from wrapalert.daemon.store import Store  # noqa: E402
from wrapalert.model import Event  # noqa: E402
from wrapalert.pipeline import chain  # noqa: E402
from wrapalert.pipeline.aggregate import Aggregator  # noqa: E402

CFG = config.loads('[[sink]]\ntype = "maildir"\npath = "/nonexistent"\n')


def events(scenario: str, n: int) -> list[Event]:
    out = []
    for i in range(n):
        if scenario == "few":
            addr, daemon = f"203.0.113.{i % 10}", ("sshd", "in.ftpd", "vsftpd")[i % 3]
        else:
            addr, daemon = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "sshd"
        fields = {
            "daemon": daemon,
            "client_addr": addr,
            "client_name": "unknown",
            "user": "unknown",
        }
        out.append(Event(fields, 1_700_000_000.0 + i * 1e-3, uid=0, transport="tcp"))
    return out


class Clock:
    def now(self) -> float:
        return 1_700_000_000.0


def pipeline(*, sight: bool) -> chain.EventPipeline:
    ledger = Ledger(Store(Path("/nonexistent")), Clock())  # type: ignore[arg-type]
    return chain.build(
        CFG,
        aggregator=Aggregator(CFG.digest, CFG.limits.max_groups),
        on_due=lambda: None,
        silences=Silences(ledger.store, Clock()),  # type: ignore[arg-type]
        books=ledger,
        forwarders={},
        sighter=ledger.sightings if sight else None,
    )


def per_event(scenario: str, n: int, *, sight: bool) -> float:
    """CPU microseconds per event through a fresh pipeline."""
    batch = events(scenario, n)
    built = pipeline(sight=sight)
    accept = built.accept
    start = time.process_time()
    for event in batch:
        accept(event)
    return (time.process_time() - start) / n * 1e6


def size_of(build: object) -> int:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()  # type: ignore[operator]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def full_sightings(daemons: int) -> sightings.Sightings:
    seen = sightings.Sightings()
    for memory, count, trusted, transport in (
        ("v", sightings.MAX_VERIFIED, True, "tcp"),
        ("u", sightings.MAX_UNVERIFIED, True, "udp"),
        ("n", sightings.MAX_UNTRUSTED, False, "unknown"),
    ):
        for i in range(count):
            for d in range(daemons):
                fields = {
                    "daemon": f"daemon{d}",
                    "client_addr": f"2001:db8:{ord(memory):x}::{i:x}",
                    "client_name": f"host{i}.example.net",
                    "user": "unknown",
                    "server": f"daemon{d}@web1",
                    "host": "web1",
                    "verdict": "deny",
                }
                seen.saw(Event(fields, 1.0 * i, uid=0, trusted=trusted, transport=transport))
    return seen


def full_history(per_target: int) -> BanHistory:
    history = BanHistory()
    for i in range(banhistory.MAX_TARGETS):
        for k in range(per_target):
            history.add(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64", float(k * 3600 + i))
    return history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    cpu: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for scenario in ("few", "distinct"):
            order = (False, True) if r % 2 == 0 else (True, False)
            for sight in order:
                key = "with" if sight else "without"
                us = per_event(scenario, args.events, sight=sight)
                cpu.setdefault(scenario, {}).setdefault(key, []).append(us)
    timing = {
        s: {
            "without_us": statistics.median(v["without"]),
            "with_us": statistics.median(v["with"]),
            "ratio": statistics.median(w / o for w, o in zip(v["with"], v["without"], strict=True)),
            "rounds": v,
        }
        for s, v in cpu.items()
    }
    memory = {
        "sightings_1_daemon": size_of(lambda: full_sightings(1)),
        f"sightings_{sightings.MAX_DAEMONS}_daemons": size_of(
            lambda: full_sightings(sightings.MAX_DAEMONS)
        ),
        "history_1_ban": size_of(lambda: full_history(1)),
        f"history_{banhistory.MAX_PER_TARGET}_bans": size_of(
            lambda: full_history(banhistory.MAX_PER_TARGET)
        ),
    }
    info = bench_machine.machine(
        events=args.events, rounds=args.rounds, load=" ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    out = ROOT / "bench" / "results"
    (out / "sightings.json").write_text(
        json.dumps({"machine": info, "cpu": timing, "memory": memory}, indent=2) + "\n"
    )
    lines = [
        "# What explain's memory costs",
        "",
        (
            f"{info['date']}, {info['cpu_model']}, {info['nproc']} CPUs, {info['platform']}, "
            f"Python {info['python']}; load {info['load']}; {args.events:,} events a run, "
            f"{args.rounds} rounds, with and without the sight stage interleaved."
        ),
        "",
        "| scenario | without (us/event) | with (us/event) | ratio (median of rounds) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {t['without_us']:.2f} | {t['with_us']:.2f} | {t['ratio']:.3f} |"
        for s, t in timing.items()
    ]
    lines += [
        "",
        "| memory at its bound | MiB |",
        "|---|---|",
        *(f"| {k} | {v / 2**20:.1f} |" for k, v in memory.items()),
        "",
    ]
    (out / "sightings.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
