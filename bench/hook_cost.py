"""CPU per refused connection through real wrapped services, for each hosts.deny hook.

Debian's sshd (linked with libwrap) and openbsd-inetd running in.fingerd through
tcpd each refuse real TCP connections from 127.0.0.2, with a private
/etc/hosts.deny bind-mounted in a private mount namespace (tests/wrapped.py).
The service runs in a cpuacct cgroup of its own: its children, the hooks they
spawn and everything those start (logger, python3, mail, exim's delivery) are
counted there, whoever else loads the machine. The wrapalert daemon runs in a
second cgroup, so what it spends per event is reported apart.

Cases, interleaved: each round runs every case once, in a rotating order.
  none     `sshd : 127.0.0.2` (refused, no hook)
  true     `spawn (/bin/true) &`: the floor of any spawn
  mail     the Securing Debian manual's `echo ... | mail root` hook (mail stays in
           the namespace's private /var/mail; counted)
  logger   `wrapalert hosts-deny-line --logger`
  durable  `wrapalert hosts-deny-line` (the default)
  client   `wrapalert hosts-deny-line --client`

A refused child sleeps 5 s in libwrap before it exits; a round ends when the
service's cgroup is back to its one listening process.

Usage: python bench/hook_cost.py [--rounds N] [--per-round N] [--services sshd,inetd]
Writes hook_cost.json and hook_cost.md to bench/results/. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine as bench_machine
from machine import tool_version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from wrapped import REFUSED_FROM, Wrapped, missing  # noqa: E402 - after the path is set up

from wrapalert import config  # noqa: E402 - keep wrapped's import next to its path
from wrapalert.cli import hosts_deny_line  # noqa: E402

CGROUP = Path("/sys/fs/cgroup/cpuacct")
CASES = ("none", "true", "mail", "logger", "durable", "client")
DAEMON_NAME = {"sshd": "sshd", "inetd": "in.fingerd"}
# The manual's hook (Securing Debian 4.12, /work/shared/seed), continuation lines as
# printed; only the rule's head is ours (it refuses 127.0.0.2 alone).
MAIL_HOOK = (
    "{daemon} : {client} : spawn ( \\\n"
    '    echo -e "\\n\\\n'
    "    TCP Wrappers\\: Connection refused\\n\\\n"
    "    By\\: $(uname -n)\\n\\\n"
    "    Process\\: %d (pid %p)\\n\\\n"
    "    User\\: %u\\n\\\n"
    "    Host\\: %c\\n\\\n"
    "    Date\\: $(date)\\n\\\n"
    '  " | /usr/bin/mail -s "Connection to %d blocked" root) &'
)


class CpuGroup:
    """A cpuacct cgroup (v1): processes added here and their children are counted."""

    def __init__(self, name: str) -> None:
        self.path = CGROUP / name
        self.path.mkdir()

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def usage(self) -> int:
        return int((self.path / "cpuacct.usage").read_text())

    def procs(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        deadline = time.monotonic() + 15
        while self.procs() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"cgroup {self.path} left behind: {exc}", file=sys.stderr)


def lines(cfg: config.Config, daemon: str) -> dict[str, str]:
    head = f"{daemon} : {REFUSED_FROM}"

    def ours(form: str) -> str:
        line = hosts_deny_line(cfg, sys.executable, daemons=daemon, form=form)  # type: ignore[arg-type]
        return line.replace(f"{daemon} : ALL : ", f"{head} : ", 1)

    return {
        "none": head,
        "true": f"{head} : spawn (/bin/true) &",
        "mail": MAIL_HOOK.format(daemon=daemon, client=REFUSED_FROM),
        "logger": ours("logger"),
        "durable": ours("durable"),
        "client": ours("client"),
    }


def start_daemon(base: Path) -> tuple[subprocess.Popen[bytes], config.Config]:
    """`wrapalert run` binding its own socket; no digest during the bench (group_wait 1h)."""
    (base / "spool").mkdir()
    path = base / "wrapalert.toml"
    path.write_text(
        f'[daemon]\nsocket = "{base}/notify.sock"\ncontrol_socket = "{base}/control.sock"\n'
        f'state_dir = "{base}/state"\nspool_dir = "{base}/spool"\ntrusted_uids = [0]\n'
        f'[digest]\ngroup_wait = "1h"\n[[sink]]\ntype = "maildir"\npath = "{base}/Maildir"\n'
    )
    cfg = config.load(path)
    with (base / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("wrapalert")), "run", "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not cfg.daemon.socket.exists():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    return proc, cfg


def received(base: Path) -> int:
    from wrapalert.daemon import control  # noqa: PLC0415 - only once the daemon runs

    status: dict[str, int] = control.request(base / "control.sock", "status")["status"]
    return status["received"]


def settle(group: CpuGroup, listening: int) -> None:
    """Until the service's cgroup holds only its listener (bounded)."""
    deadline = time.monotonic() + 30
    while len(group.procs()) > listening and time.monotonic() < deadline:
        time.sleep(0.05)


def bench_service(
    name: str, rounds: int, per_round: int, pause: float, cases: tuple[str, ...] = CASES
) -> dict[str, object]:
    tag = f"wa-hook-{os.getpid()}-{name}"
    with tempfile.TemporaryDirectory(prefix="wa-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        daemon, cfg = start_daemon(base)
        service = Wrapped(base, name)
        hooks = lines(cfg, DAEMON_NAME[name])
        service_cg, daemon_cg = CpuGroup(tag), CpuGroup(tag + "-daemon")
        per: dict[str, list[float]] = {c: [] for c in cases}
        daemon_per: dict[str, list[float]] = {c: [] for c in cases}
        mails: dict[str, int] = dict.fromkeys(cases, 0)
        events: dict[str, int] = dict.fromkeys(cases, 0)
        try:
            daemon_cg.add(daemon.pid)
            service.start()
            service_cg.add(service.pid)
            listening = len(service_cg.procs())
            for r in range(rounds):
                order = cases[r % len(cases) :] + cases[: r % len(cases)]
                for case in order:
                    service.set_deny(hooks[case])
                    mail0, got0 = service.mails(), received(base)
                    s0, d0 = service_cg.usage(), daemon_cg.usage()
                    service.refuse(per_round, pause=pause)
                    settle(service_cg, listening)
                    time.sleep(0.3)  # the daemon's group commit of the last events
                    s1, d1 = service_cg.usage(), daemon_cg.usage()
                    per[case].append((s1 - s0) / per_round / 1e6)
                    daemon_per[case].append((d1 - d0) / per_round / 1e6)
                    mails[case] += service.mails() - mail0
                    events[case] += received(base) - got0
                    print(f"{name} round {r + 1} {case}: {per[case][-1]:.2f} ms", file=sys.stderr)
        finally:
            service.stop()
            daemon.terminate()
            daemon.wait(timeout=30)
            service_cg.remove()
            daemon_cg.remove()
        spooled = len(list((base / "spool").iterdir()))
    total = rounds * per_round
    none = statistics.median(per["none"])
    rows = {}
    for case in cases:
        cpu = statistics.median(per[case])
        dcpu = statistics.median(daemon_per[case]) - statistics.median(daemon_per["none"])
        rows[case] = {
            "cpu_ms": round(cpu, 3),
            "cpu_ms_rounds": [round(x, 3) for x in per[case]],
            "added_ms": round(cpu - none, 3),
            "daemon_added_ms": round(dcpu, 3),
            "mails_per_refusal": round(mails[case] / total, 3),
            "events_per_refusal": round(events[case] / total, 3),
        }
    return {"rows": rows, "refusals_per_case": total, "left_in_spool": spooled}


def machine() -> dict[str, object]:
    def package(name: str) -> str:
        return tool_version(["dpkg-query", "-W", "-f", "${Version}", name]) or "missing"

    return bench_machine.machine(
        logger=tool_version(["logger", "-V"]) or "missing",
        sshd=package("openssh-server"),
        libwrap0=package("libwrap0"),
        **{"openbsd-inetd": package("openbsd-inetd")},
        loadavg=Path("/proc/loadavg").read_text().split()[:3],
    )


def markdown(report: dict[str, object]) -> str:
    info = report["machine"]
    assert isinstance(info, dict)
    out = [
        "# CPU per refused connection, by hosts.deny hook",
        "",
        (
            f"{report['rounds']} rounds x {report['per_round']} refused connections per case "
            f"and service, cases interleaved (rotating order), {info['date']}."
        ),
        (
            f"Machine: {info['cpu_model']}, {info['nproc']} CPUs, kernel {info['kernel']}, "
            f"{info['platform']}, Python {info['python']}; {info['logger']}; openssh-server "
            f"{info['sshd']}, libwrap0 {info['libwrap0']}, openbsd-inetd {info['openbsd-inetd']}."
        ),
        (
            f"Load average before/after: {info['loadavg']} / {report['loadavg_after']} (the "
            "machine was shared with other work: the cgroup counts only the service and what "
            "it spawns)."
        ),
        "",
        (
            "CPU is the service's cpuacct cgroup per refusal (median of rounds): the refused "
            "child, libwrap, the hook and all it starts. *added* = minus the no-hook case. "
            "*daemon* = the wrapalert daemon's extra CPU per refusal (its own cgroup)."
        ),
    ]
    services = report["services"]
    assert isinstance(services, dict)
    for name, result in services.items():
        rows = result["rows"]
        floor = rows["true"]["added_ms"]
        out += [
            "",
            f"## {name} ({DAEMON_NAME[name]})",
            "",
            "| hook | CPU ms | added ms | vs /bin/true | daemon ms | mails | events |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for case in CASES:
            row = rows[case]
            ratio = row["added_ms"] / floor if floor > 0 and case != "none" else float("nan")
            out.append(
                f"| {case} | {row['cpu_ms']:.2f} | {row['added_ms']:.2f} | "
                f"{'' if case == 'none' else f'{ratio:.1f}x'} | {row['daemon_added_ms']:.2f} | "
                f"{row['mails_per_refusal']:g} | {row['events_per_refusal']:g} |"
            )
        goals = result["goals"]
        out += ["", *(f"- {k}: {v}" for k, v in goals.items())]
    return "\n".join(out) + "\n"


def goals(rows: dict[str, dict[str, float]]) -> dict[str, str]:
    durable, logger, mail = (rows[c]["added_ms"] for c in ("durable", "logger", "mail"))
    return {
        "durable / logger added CPU (goal <= 1.2)": f"{durable / logger:.2f}",
        "mail / durable added CPU (goal >= 5)": f"{mail / durable:.1f}",
        "mails per refusal, durable (goal 0)": f"{rows['durable']['mails_per_refusal']:g}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between connections")
    parser.add_argument("--services", default="sshd,inetd")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    report: dict[str, object] = {
        "rounds": args.rounds,
        "per_round": args.per_round,
        "machine": machine(),
    }
    services: dict[str, object] = {}
    skipped = {}
    for name in args.services.split(","):
        reason = missing(name)
        if reason is not None:
            skipped[name] = reason
            continue
        result = bench_service(name, args.rounds, args.per_round, args.pause)
        result["goals"] = goals(result["rows"])  # type: ignore[arg-type]
        services[name] = result
    report["services"] = services
    report["skipped"] = skipped
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hook_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "hook_cost.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
