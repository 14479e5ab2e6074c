"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what `platform` cannot tell on Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def tool_version(argv: list[str]) -> str | None:
    """The first line a tool prints about its version, or None if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=5)
    except OSError:
        return None
    text = done.stdout.strip() or done.stderr.strip()
    return text.splitlines()[0] if text else None


def machine(**extra: object) -> dict[str, object]:
    """Date, platform, kernel, CPU, cores and Python, plus what a benchmark adds."""
    uname = platform.uname()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "kernel": f"{uname.release} {uname.version}",
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        **extra,
    }
