"""The cost of one look at the fleet: a peer's full answer (fleetwire.MAX_REPLY bytes of
WrapalertBan alerts, as Alertmanager lists them) read as hostile input and made this
host's view (fleetwire.read_alerts + fleet_view), against a bare json.loads of the same
bytes measured in the same run. daemon/fleet.py runs both beside the event loop, one
answer at a time: this is the time and the peak memory that costs.

Usage: python bench/fleet_reply.py [--runs N] [--out DIR]
Writes fleet_reply.json and fleet_reply.md to bench/results/ by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from machine import machine

from wrapalert.banrule import BanRule
from wrapalert.fleetwire import MAX_REPLY, fleet_view, read_alerts, rfc3339

NOW = 1_700_000_000.0


def alert(i: int) -> dict[str, object]:
    """One ban alert as Alertmanager 0.25's GET /api/v2/alerts lists it."""
    addr = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" if i % 4 else f"2001:db8:{i:x}::7"
    return {
        "annotations": {"summary": f"{addr} banned on web{i % 50} (3 refusals)", "detail": "x"},
        "endsAt": rfc3339(NOW + 3600 + i),
        "fingerprint": f"{i:016x}",
        "receivers": [{"name": "wrapalert-bans"}],
        "startsAt": rfc3339(NOW - 60),
        "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
        "updatedAt": rfc3339(NOW - 1),
        "generatorURL": "",
        "labels": {
            "alertname": "WrapalertBan",
            "client_addr": addr,
            "host": f"web{i % 50}",
            "reason": "threshold",
        },
    }


def full_reply() -> tuple[bytes, int]:
    """As many alerts as fit in MAX_REPLY bytes, and how many that is."""
    one = len(json.dumps(alert(123_456))) + 1
    count = MAX_REPLY // one - 1
    body = json.dumps([alert(i) for i in range(count)]).encode()
    assert len(body) <= MAX_REPLY, len(body)
    return body, count


def measure(work: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median seconds over `runs`, and the peak traced memory of one more run (MB)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    body, count = full_reply()
    rule = BanRule(follow=True)

    def look() -> object:
        reading = read_alerts(body, NOW)
        assert len(reading.sightings) == count, reading.rejected
        return fleet_view(reading.sightings, rule, me="web-me")

    # Interleaved: the baseline and the look alternate, so load shifts hit both.
    base_t, look_t = [], []
    base_m = look_m = 0.0
    for _ in range(args.runs):
        t, m = measure(lambda: json.loads(body), 1)
        base_t.append(t)
        base_m = max(base_m, m)
        t, m = measure(look, 1)
        look_t.append(t)
        look_m = max(look_m, m)
    result = {
        "machine": machine(),
        "runs": args.runs,
        "alerts": count,
        "reply_bytes": len(body),
        "json_loads_s": statistics.median(base_t),
        "look_s": statistics.median(look_t),
        "ratio": statistics.median(look_t) / statistics.median(base_t),
        "json_loads_peak_mb": base_m,
        "look_peak_mb": look_m,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet_reply.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    assert isinstance(m, dict)
    report = "\n".join(
        [
            "# One look at the fleet: a full peer answer",
            "",
            (
                f"{m['date']}, {m['cpu_model']} ({m['nproc']} cores), Python {m['python']}, "
                f"{args.runs} interleaved runs (`python bench/fleet_reply.py`)."
            ),
            "",
            (
                f"A {len(body):,}-byte answer (fleetwire.MAX_REPLY) holding {count:,} "
                "WrapalertBan alerts as Alertmanager lists them (a quarter IPv6), read and "
                "made this host's view."
            ),
            "",
            "| work | median s | ratio | peak MB (tracemalloc) |",
            "|---|---:|---:|---:|",
            f"| json.loads alone (baseline) | {result['json_loads_s']:.3f} | 1.00 | {base_m:.0f} |",
            (
                f"| read_alerts + fleet_view | {result['look_s']:.3f} | {result['ratio']:.2f} | "
                f"{look_m:.0f} |"
            ),
            "",
        ]
    )
    (args.out / "fleet_reply.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
