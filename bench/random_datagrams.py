"""Throw random datagrams at the running daemon: it stays up, memory stays bounded, all counted.

Starts `wrapalert run -c CONFIG` on a temporary configuration, sends --count
datagrams over loopback AF_UNIX (a mix of pure random bytes, mutated valid
WA1 datagrams and oversized ones; deterministic for a --seed), then stops it
with SIGTERM and reads its final `stopped` log line (JSON log format, the
same fields as the key=value line): every datagram sent must be counted as
received or rejected. Peak RSS is the daemon's VmHWM from /proc.

The baseline is the same sender against a bare `recvmsg` loop with
SO_PASSCRED in its own process: the ceiling this sender and this kernel
allow, measured in the same run.

    .venv/bin/python bench/random_datagrams.py --count 1000000
    .venv/bin/python bench/random_datagrams.py --count 20000 --no-write   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import cpu_model

from wrapalert import wire

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
SENTINEL = b"\0wrapalert-bench-end\0"  # 21 bytes: random data never equals it in practice
KINDS = (("random", 0.4), ("mutated", 0.4), ("oversized", 0.2))
SAMPLES = 20  # RSS samples over the run

BASELINE_RECEIVER = r"""
import socket, sys, time
path, sentinel = sys.argv[1], bytes.fromhex(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
sock.bind(path)
print("ready", flush=True)
anc = socket.CMSG_SPACE(12)
n, first = 0, None
while True:
    data, _, _, _ = sock.recvmsg(4097, anc)
    if first is None:
        first, cpu0 = time.monotonic(), time.process_time()
    if data == sentinel:
        break
    n += 1
print(n, time.monotonic() - first, time.process_time() - cpu0, flush=True)
"""


class Datagrams:
    """The deterministic stream: datagram `i` is the same in the baseline and the daemon run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = random.Random(seed)
        self.pool = rng.randbytes(1 << 23)  # 8 MiB of random bytes to slice from
        self.templates = [self.valid(rng) for _ in range(256)]

    @staticmethod
    def valid(rng: random.Random) -> bytes:
        fields = {
            "d": rng.choice(["sshd", "in.ftpd", "vsftpd", "sshd-session"]),
            "p": str(rng.randrange(1, 1 << 22)),
            "c": f"root@192.0.2.{rng.randrange(256)}",
            "a": rng.choice(
                [f"198.51.100.{rng.randrange(256)}", f"2001:db8::{rng.randrange(1 << 16):x}"]
            ),
            "n": rng.choice(["unknown", "paranoid", "host.example"]),
            "s": "sshd@192.0.2.1",
            "t": f"{1.7e9 + rng.random() * 1e6:.6f}",
            "H": "bench",
        }
        return wire.encode(fields)

    def stream(self, count: int) -> Iterator[tuple[str, bytes]]:
        rng = random.Random(self.seed + 1)
        pool, size = self.pool, len(self.pool)
        kinds = [k for k, _ in KINDS]
        weights = [w for _, w in KINDS]
        for _ in range(count):
            kind = rng.choices(kinds, weights)[0]
            if kind == "random":
                n = rng.randrange(0, wire.MAX_DATAGRAM + 1)
            elif kind == "oversized":
                # Mostly just over the limit; 1 in 100 near the kernel's ~208 KiB maximum.
                top = 212_000 if rng.random() < 0.01 else 65_536
                n = rng.randrange(wire.MAX_DATAGRAM + 1, top)
            if kind != "mutated":
                at = rng.randrange(0, size - n)
                yield kind, pool[at : at + n]
                continue
            yield kind, self.mutate(rng, bytearray(rng.choice(self.templates)))

    def mutate(self, rng: random.Random, data: bytearray) -> bytes:
        for _ in range(rng.randrange(1, 9)):
            op = rng.randrange(6)
            at = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at:at] = self.pool[at : at + rng.randrange(1, 16)]
            elif op == 2:
                del data[at : at + rng.randrange(1, 16)]
            elif op == 3:
                end = data.find(b"\n", at)
                if end >= 0:
                    start = data.rfind(b"\n", 0, at) + 1
                    data[end + 1 : end + 1] = data[start : end + 1]
            elif op == 4:
                data[at:at] = rng.choice([b"\n", b"=", b"\0", b"\xff", b"\r", "é".encode()])
            else:
                del data[at:]
        return bytes(data)


@dataclass
class Sent:
    sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    eagain: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    rss: list[tuple[int, int]] = field(default_factory=list)  # (datagrams sent, VmRSS kB)
    died_at: int | None = None


def send_all(path: Path, stream: Iterator[tuple[str, bytes]], count: int, pid: int | None) -> Sent:
    """Send every datagram, waiting for queue space on EAGAIN; sample the receiver's RSS."""
    out = Sent()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(str(path))
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    every = max(count // SAMPLES, 1)
    start = time.monotonic()
    for i, (kind, data) in enumerate(stream):
        if pid is not None and i % every == 0:
            out.rss.append((i, status_kb(pid, "VmRSS")))
        while True:
            try:
                sock.send(data)
            except BlockingIOError:
                out.eagain += 1
                # A connected datagram socket polls writable once the peer's queue has room.
                poller.poll(1000)
                continue
            except ConnectionRefusedError:
                out.died_at = i
                sock.close()
                out.seconds = time.monotonic() - start
                return out
            except OSError as exc:
                out.errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                break
            out.sent += 1
            out.by_kind[kind] += 1
            break
    out.seconds = time.monotonic() - start
    sock.setblocking(True)
    sock.send(SENTINEL)  # the baseline stops on it; the daemon rejects it as one more datagram
    out.sent += 1
    out.by_kind["sentinel"] += 1
    sock.close()
    return out


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline(work: Path, datagrams: Datagrams, count: int) -> dict[str, Any]:
    path = work / "baseline.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE_RECEIVER, str(path), SENTINEL.hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
        sys.exit("the baseline receiver did not start")
    sent = send_all(path, datagrams.stream(count), count, proc.pid)
    received, seconds, cpu = proc.stdout.readline().split()
    proc.wait(timeout=30)
    return {
        "sent": sent.sent - 1,
        "received": int(received),
        "sender_seconds": round(sent.seconds, 3),
        "rate_per_s": round((sent.sent - 1) / sent.seconds),
        "receiver_seconds": round(float(seconds), 3),
        "receiver_cpu_us_per_datagram": round(float(cpu) / int(received) * 1e6, 2),
        "eagain_waits": sent.eagain,
        "send_errors": dict(sent.errors),
    }


CONFIG = """\
[daemon]
socket = "{base}/notify.sock"
control_socket = "{base}/control.sock"
state_dir = "{base}/state"
spool_dir = "{base}/spool"
trusted_uids = [{uid}]

[digest]
group_wait = "500ms"
group_interval = "2s"
batch_window = "500ms"

[limits]
max_groups = {max_groups}

[[sink]]
type = "maildir"
path = "{base}/Maildir"
"""


def wait_for_log(
    log: Path, event: str, proc: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    return dict(record)
        if proc.poll() is not None and event != "stopped":
            break
        time.sleep(0.05)  # a bench polling a log file; the daemon has no readiness pipe
    sys.exit(f"daemon never logged {event!r}; its log:\n{log.read_text(errors='replace')}")


def against_daemon(work: Path, datagrams: Datagrams, count: int, max_groups: int) -> dict[str, Any]:
    config = CONFIG.format(base=work, uid=os.getuid(), max_groups=max_groups)
    (work / "wrapalert.toml").write_text(config)
    log = work / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [WRAPALERT, "run", "-c", str(work / "wrapalert.toml"), "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for_log(log, "ready", proc, 30)
        idle_rss = status_kb(proc.pid, "VmRSS")
        cpu0 = cpu_seconds(proc.pid)
        sent = send_all(work / "notify.sock", datagrams.stream(count), count, proc.pid)
        alive = proc.poll() is None
        peak = status_kb(proc.pid, "VmHWM") if alive else -1
        cpu = cpu_seconds(proc.pid) - cpu0 if alive else -1.0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        stopped = wait_for_log(log, "stopped", proc, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
    rejected = {str(k): int(v) for k, v in dict(stopped.get("rejected", {})).items()}
    counted = int(stopped.get("received", 0)) + sum(rejected.values())
    return {
        "alive_after_run": alive,
        "exit_code": proc.returncode,
        "sent": sent.sent,
        "sent_by_kind": dict(sent.by_kind),
        "not_sendable": dict(sent.errors),
        "died_at": sent.died_at,
        "sender_seconds": round(sent.seconds, 3),
        "rate_per_s": round(sent.sent / sent.seconds),
        "eagain_waits": sent.eagain,
        "daemon_cpu_seconds": round(cpu, 2),
        "daemon_cpu_us_per_datagram": round(cpu / sent.sent * 1e6, 2),
        "received": int(stopped.get("received", 0)),
        "rejected": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        "counted": counted,
        "unaccounted": sent.sent - counted,
        "groups_at_stop": stopped.get("groups"),
        "pending_events_at_stop": stopped.get("pending_events"),
        "outbox_at_stop": stopped.get("outbox"),
        "digests": stopped.get("digests"),
        "sinks_at_stop": stopped.get("sinks"),
        "rss_idle_kb": idle_rss,
        "rss_samples_kb": sent.rss,
        "vmhwm_kb": peak,
        "log_lines": len(log.read_text(errors="replace").splitlines()),
    }


def machine() -> dict[str, object]:
    cpu = cpu_model()

    def sysctl(name: str) -> str:
        try:
            return Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            return "?"

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "net.unix.max_dgram_qlen": sysctl("net.unix.max_dgram_qlen"),
        "net.core.wmem_default": sysctl("net.core.wmem_default"),
        "net.core.rmem_default": sysctl("net.core.rmem_default"),
    }


def markdown(result: dict[str, Any]) -> str:
    d, b, m = result["daemon"], result["baseline"], result["machine"]
    samples = d["rss_samples_kb"]
    rss = ", ".join(f"{n:,}: {kb / 1024:.1f}" for n, kb in samples[:: max(len(samples) // 5, 1)])
    rejected = ", ".join(f"{k} {v:,}" for k, v in d["rejected"].items())
    base_us, daemon_us = b["receiver_cpu_us_per_datagram"], d["daemon_cpu_us_per_datagram"]
    idle, peak = d["rss_idle_kb"] / 1024, d["vmhwm_kb"] / 1024
    unsendable = d["not_sendable"] or "none"
    return f"""# Random datagrams against the running daemon

`{result["command"]}` on {result["date"]}.

Machine: {m["cpu"]}, {m["cpus"]} CPUs, Linux {m["kernel"]}, Python {m["python"]},
`net.unix.max_dgram_qlen` = {m["net.unix.max_dgram_qlen"]}, wmem/rmem default
{m["net.core.wmem_default"]}/{m["net.core.rmem_default"]} bytes.

Stream (seed {result["seed"]}): {result["count"]:,} datagrams, 40 % random bytes
(0-4096), 40 % mutated valid WA1 (1-8 byte flips, inserts, deletions, repeated
lines, truncations), 20 % oversized (4097-65535 bytes, 1 in 100 up to 212000),
plus one end marker. Sent by kind: {d["sent_by_kind"]}; not sendable: {unsendable}.

| | baseline: bare `recvmsg` loop | `wrapalert run` |
|---|---|---|
| datagrams sent | {b["sent"]:,} | {d["sent"]:,} |
| sender wall time | {b["sender_seconds"]} s | {d["sender_seconds"]} s |
| rate | {b["rate_per_s"]:,}/s | {d["rate_per_s"]:,}/s |
| sender waits on EAGAIN | {b["eagain_waits"]:,} | {d["eagain_waits"]:,} |
| receiver CPU per datagram | {base_us} us | {daemon_us} us |
| one core's capacity (1 / CPU per datagram) | {1e6 / base_us:,.0f}/s | {1e6 / daemon_us:,.0f}/s |

Both runs are paced by the sender (it builds each datagram in Python), so the
rates are the same stream's; the CPU each receiver spends per datagram is the
comparison. The daemon's count includes the end marker (one more `bad_tag`).

Daemon:
- alive after the run: **{d["alive_after_run"]}**; exit code after SIGTERM {d["exit_code"]}.
- accounting: sent {d["sent"]:,} = received {d["received"]:,} + rejected
  {sum(d["rejected"].values()):,}; unaccounted **{d["unaccounted"]}**.
- rejected by reason: {rejected}.
- memory: idle {idle:.1f} MiB, peak (VmHWM) **{peak:.1f} MiB**;
  VmRSS in MiB after N datagrams: {rss}.
- groups at stop: {d["groups_at_stop"]}; log lines written: {d["log_lines"]:,}.

Verdict: {result["verdict"]}.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--baseline-count", type=int, default=None, help="default: --count")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--max-groups", type=int, default=10000, help="[limits] max_groups")
    parser.add_argument("--rss-limit-mb", type=float, default=256.0, help="verdict threshold")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    datagrams = Datagrams(args.seed)
    with tempfile.TemporaryDirectory(prefix="wa-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        base = baseline(work, datagrams, args.baseline_count or args.count)
        daemon = against_daemon(work, datagrams, args.count, args.max_groups)
    ok = (
        daemon["alive_after_run"] is True
        and daemon["unaccounted"] == 0
        and 0 < daemon["vmhwm_kb"] / 1024 <= args.rss_limit_mb
    )
    result: dict[str, Any] = {
        "command": " ".join(["bench/random_datagrams.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "seed": args.seed,
        "count": args.count,
        "max_groups": args.max_groups,
        "machine": machine(),
        "baseline": base,
        "daemon": daemon,
        "verdict": (
            f"PASS (up, every datagram counted, peak RSS within {args.rss_limit_mb:g} MiB)"
            if ok
            else "FAIL"
        ),
    }
    text = markdown(result)
    print(text)
    if not args.no_write:
        args.out.mkdir(exist_ok=True)
        (args.out / "random_datagrams.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "random_datagrams.md").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
