"""Time to render one digest mail (context, three templates, MIME) as digests grow.

Each digest comes from the real Aggregator (wrapalert.preview.build_digest);
the largest is as many groups as the default max_groups allows. Rendering is
on the daemon's delivery path, so it must stay well under a second even then.

Usage: python bench/digest_render.py [--runs N] [--out DIR]
Writes digest_render.md to bench/results/ by default.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from wrapalert import config
from wrapalert.mail import Renderer
from wrapalert.preview import SAMPLE, build_digest, parse_events

NOW = 1_700_000_000.0


def events(groups: int) -> str:
    """`groups` sources in distinct /24s (no sweeps), three events each, over ten minutes."""
    return "\n".join(
        f"d=sshd a=10.{i // 250 % 250}.{i % 250}.7 n=host{i}.example count=3 ago={i % 600}s"
        for i in range(groups)
    )


def measure(text: str, runs: int) -> tuple[int, int, float, float]:
    cfg = config.Config()
    digest = build_digest(parse_events(text), cfg, NOW, "bench")
    renderer = Renderer("wrapalert@localhost", ("root",))
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        size = len(bytes(renderer.render(digest)))
        times.append(time.perf_counter() - start)
    return len(digest.groups), size, statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    sizes = (100, 1000, config.LimitsConfig().max_groups)
    rows = [("sample", *measure(SAMPLE, args.runs))]
    rows += [(f"{n} sources", *measure(events(n), args.runs)) for n in sizes]
    machine = f"{platform.python_implementation()} {platform.python_version()} on "
    lines = [
        "# Digest rendering",
        "",
        f"{machine}{platform.machine()}, {args.runs} runs each (`python bench/digest_render.py`);",
        "the max includes the first render, which compiles the templates.",
        "",
        "| digest | groups | mail bytes | median ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, groups, size, median, worst in rows:
        lines.append(f"| {name} | {groups:,} | {size:,} | {median * 1e3:.1f} | {worst * 1e3:.1f} |")
    report = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digest_render.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
