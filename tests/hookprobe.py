"""Refuse connections through real libwrap and watch the hook processes it spawns.

Run as a script (a process of its own: libwrap is not thread-safe, and the probe
becomes a child subreaper, so the hook's `( ... ) &` subshell, orphaned when
libwrap's `sh -c` exits, is re-parented to it instead of to PID 1). Each orphan's
lifetime is read from /proc when it exits (start time in clock ticks, 10 ms
resolution) and the live hook processes are counted after each refusal. Prints
one JSON object: refused, lifetimes (seconds), peak (live hook processes), killed
(still alive `settle` seconds after the last refusal: killed by pid, all ours).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Live (not zombie) descendants of `pid`, read from /proc."""
    out: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                stack.append(child)
                if _state(child) not in ("Z", ""):
                    out.append(child)
    return out


def _stat(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd on (comm may hold spaces)


def _state(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else ""


def reap(lifetimes: list[float]) -> None:
    """Reap every exited child, recording how long it lived."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        fields = _stat(info.si_pid)
        if fields:
            started = int(fields[19]) / _TICK  # starttime, field 22
            lifetimes.append(time.clock_gettime(time.CLOCK_BOOTTIME) - started)
        os.waitpid(info.si_pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deny", type=Path, required=True)
    parser.add_argument("--daemon", default="sshd")
    parser.add_argument("--addr", default="192.0.2.{i}", help="{i} is the refusal's number")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from wrapalert.libwrap import LibWrap  # noqa: PLC0415 - after the path is set up

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    allow = args.deny.with_name("hosts.allow.empty")
    allow.write_text("")
    wrap = LibWrap(allow, args.deny)
    me = os.getpid()
    lifetimes: list[float] = []
    refused = peak = 0
    start = time.monotonic()
    for i in range(args.count):
        refused += not wrap.allowed(args.daemon, args.addr.format(i=i % 250 + 1))
        slot = start + (i + 1) * args.interval
        while True:
            reap(lifetimes)
            peak = max(peak, len(descendants(me)))
            if time.monotonic() >= slot:
                break
            time.sleep(0.001)
    deadline = time.monotonic() + args.settle
    while (alive := descendants(me)) and time.monotonic() < deadline:
        reap(lifetimes)
        time.sleep(0.002)
    reap(lifetimes)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    reap([])  # the killed: their lifetimes would only say how long we waited
    json.dump(
        {"refused": refused, "lifetimes": lifetimes, "peak": peak, "killed": len(alive)}, sys.stdout
    )


if __name__ == "__main__":
    main()
