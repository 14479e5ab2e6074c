"""Flood throughput of the running daemon, against a bare recvmsg loop, in one run.

Scenarios (each N datagrams, default 1,000,000, through a real AF_UNIX socket):
  few       20 client addresses x 2 daemons, over and over
  distinct  N distinct IPv6 addresses (every event a new source: roll-ups, overflow)

For each, two receivers are timed with the same sender process:
  baseline  a bare Python recvmsg loop with SO_PASSCRED (the ceiling for a Python reader)
  daemon    `wrapalert run` (socket passed the systemd way, default limits: max_groups
            10000, 12 mails per hour), until its status says it received all N

The sender never drops: it waits for room (poll on a connected socket) when the queue
is full, so "lost" is N less what the daemon counted. Reported: events/s (and ratio to
the baseline), daemon CPU per event (from /proc/PID/stat), peak RSS (VmHWM), digests
mailed (to a Maildir) and the events they report.

Usage: python bench/throughput.py [--count N] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import json
import multiprocessing as mp
import os
import platform
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
WRAPALERT = str(Path(sys.executable).with_name("wrapalert"))
TICK = os.sysconf("SC_CLK_TCK")
QLEN = Path("/proc/sys/net/unix/max_dgram_qlen")
SHIM = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def payloads(scenario: str, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        if scenario == "few":
            addr, daemon = f"198.51.100.{i % 20}", ("sshd", "vsftpd")[i % 2]
        else:
            addr, daemon = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1", "sshd"
        out.append(
            f"WA1\nd={daemon}\np=4242\nc={addr}\na={addr}\nn=unknown\ns={daemon}\n"
            f"t=1700000000.000000\nH=bench\n".encode()
        )
    return out


def sender(path: str, scenario: str, count: int, go: mp.Event) -> None:  # type: ignore[valid-type]
    data = payloads(scenario, count)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(path)  # connected: poll() then reports room in the receiver's queue
    sock.setblocking(False)
    go.wait()  # type: ignore[attr-defined]
    for item in data:
        while True:
            try:
                sock.send(item)
                break
            except BlockingIOError:
                select.select([], [sock], [], 1.0)


def baseline(path: Path, scenario: str, count: int) -> dict[str, float]:
    """A bare recvmsg loop: how fast can Python read these datagrams at all."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    go = mp.Event()
    proc = mp.Process(target=sender, args=(str(path), scenario, count, go))
    proc.start()
    anc = socket.CMSG_SPACE(struct.calcsize("iII"))
    cpu0 = time.process_time()
    go.set()
    sock.recvmsg(4097, anc)
    start = time.perf_counter()
    for _ in range(count - 1):
        sock.recvmsg(4097, anc)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    proc.join()
    sock.close()
    path.unlink()
    return {"events_per_s": count / wall, "cpu_us_per_event": cpu / count * 1e6, "wall_s": wall}


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(control: Path) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(control))
        s.sendall(b'{"cmd": "status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(65536)
    reply: dict[str, object] = json.loads(data)["status"]
    return reply


def daemon(base: Path, scenario: str, count: int) -> dict[str, float]:
    cfg = base / "wrapalert.toml"
    cfg.write_text(f"""\
[daemon]
socket = "{base}/notify.sock"
control_socket = "{base}/control.sock"
state_dir = "{base}/state"
spool_dir = "{base}/spool"

[[sink]]
type = "maildir"
path = "{base}/Maildir"
""")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(base / "notify.sock"))
    log = (base / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", SHIM, str(sock.fileno()), WRAPALERT, "run", "-c", str(cfg)],
        pass_fds=(sock.fileno(),),
        stdin=subprocess.DEVNULL,
        stderr=log,
    )
    control = base / "control.sock"
    while not control.exists():
        time.sleep(0.05)
    go = mp.Event()
    sender_proc = mp.Process(target=sender, args=(str(base / "notify.sock"), scenario, count, go))
    sender_proc.start()
    time.sleep(1.0)  # payloads built before the clock starts
    cpu0 = proc_cpu(proc.pid)
    start = time.perf_counter()
    go.set()
    received = 0
    while received < count:
        time.sleep(0.2)
        received = int(status(control)["received"])  # type: ignore[call-overload]
    wall = time.perf_counter() - start
    cpu = proc_cpu(proc.pid) - cpu0
    sender_proc.join()
    final = status(control)
    hwm = proc_hwm_mib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    sock.close()
    mails = [email.message_from_bytes(p.read_bytes()) for p in (base / "Maildir/new").iterdir()]
    return {
        "events_per_s": count / wall,
        "cpu_us_per_event": cpu / count * 1e6,
        "wall_s": wall,
        "peak_rss_mib": hwm,
        "received": final["received"],  # type: ignore[dict-item]
        "lost": count - int(final["received"]),  # type: ignore[call-overload]
        "groups_at_end": final["groups"],  # type: ignore[dict-item]
        "mails": len(mails),
        "events_in_mails": sum(int(m["X-Wrapalert-Events"]) for m in mails),
    }


def machine() -> dict[str, object]:
    cpu = cpu_model()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }


def markdown(rows: list[dict[str, object]], info: dict[str, object], count: int) -> str:
    lines = [
        "# Daemon flood throughput",
        "",
        (
            f"{count:,} datagrams per scenario, {info['date']}. Machine: {info['cpu_model']}, "
            f"{info['nproc']} CPUs, {info['platform']}, Python {info['python']}."
        ),
        "",
        (
            "| scenario | qlen | baseline events/s | daemon events/s | ratio "
            "| daemon CPU us/event | peak RSS MiB | lost | mails | events in mails |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        b, d = row["baseline"], row["daemon"]
        assert isinstance(b, dict)
        assert isinstance(d, dict)
        lines.append(
            f"| {row['scenario']} | {row['qlen']} | {b['events_per_s']:,.0f} | "
            f"{d['events_per_s']:,.0f} | {d['events_per_s'] / b['events_per_s']:.2f} | "
            f"{d['cpu_us_per_event']:.1f} | {d['peak_rss_mib']:.1f} | {d['lost']:,.0f} | "
            f"{d['mails']:.0f} | {d['events_in_mails']:,.0f} |"
        )
    lines += [
        "",
        (
            "Baseline: a bare Python recvmsg loop (SO_PASSCRED) fed by the same sender in the "
            "same run; ratio = daemon / baseline. qlen is net.unix.max_dgram_qlen, the kernel's "
            "datagram queue length: 10 on machines without systemd, 512 where systemd is PID 1 "
            "(it raises it at boot). Sender and daemon share the machine's cores. Mails are "
            "counted after SIGTERM (whose flush sends what the cap held back), against the "
            "default cap of 12 per hour."
        ),
    ]
    return "\n".join(lines) + "\n"


def set_qlen(value: int) -> bool:
    try:
        QLEN.write_text(str(value))
    except OSError:
        return False
    return QLEN.read_text().strip() == str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--qlen",
        type=int,
        action="append",
        help="queue lengths to run at (sets the sysctl; needs root); "
        "default: this machine's, and 512 if root",
    )
    args = parser.parse_args()
    original = int(QLEN.read_text())
    qlens = args.qlen or ([original, 512] if os.geteuid() == 0 and original != 512 else [original])
    rows: list[dict[str, object]] = []
    try:
        for qlen in qlens:
            if qlen != original and not set_qlen(qlen):
                print(f"cannot set net.unix.max_dgram_qlen={qlen} (needs root): skipped")
                continue
            for scenario in ("few", "distinct"):
                base = Path(tempfile.mkdtemp(prefix="wa-bench-", dir="/tmp"))
                try:
                    row: dict[str, object] = {
                        "scenario": scenario,
                        "qlen": qlen,
                        "baseline": baseline(base / "baseline.sock", scenario, args.count),
                        "daemon": daemon(base, scenario, args.count),
                    }
                finally:
                    shutil.rmtree(base, ignore_errors=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        set_qlen(original)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(
        json.dumps({"count": args.count, "machine": info, "results": rows}, indent=2)
    )
    report = markdown(rows, info, args.count)
    (args.out / "throughput.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
