"""Real libwrap-linked services for tests and benches, each with a private hosts.deny.

libwrap reads only /etc/hosts.deny and /etc/hosts.allow, so the service runs in
a private mount namespace (`unshare -m`) where our own files are bind-mounted
over those two (PLATFORM.md, "Real wrapped services"). Mail is kept private
the same way (/var/mail, exim's spool and log on files of ours), so a bench of
the manual's mail hook delivers nothing to the machine's own mailboxes.

Stdlib only: bench/hook_cost.py imports it too. Needs root (mount).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from helpers import free_port

SSHD = "/usr/sbin/sshd"
INETD = "/usr/sbin/inetd"
TCPD = "/usr/sbin/tcpd"
REFUSED_FROM = "127.0.0.2"  # loopback too: 127.0.0.0/8 needs no address of its own


def missing(service: str) -> str | None:
    """Why `service` ("sshd" or "inetd") cannot run here, or None."""
    need = {"sshd": (SSHD, "openssh-server"), "inetd": (INETD, "openbsd-inetd")}[service]
    for path, package in (need, (TCPD, "tcpd"), ("/usr/bin/unshare", "util-linux")):
        if service == "sshd" and path == TCPD:
            continue
        if not Path(path).exists():
            return f"{path} is missing (apt-get install {package})"
    if os.geteuid() != 0:
        return "mounting a private /etc/hosts.deny needs root"
    return None


class Wrapped:
    """A libwrap-linked service on 127.0.0.1:port that refuses REFUSED_FROM by hosts.deny."""

    def __init__(self, base: Path, service: str) -> None:
        self.base = base
        self.service = service
        self.port = free_port()
        self.deny = base / "hosts.deny"
        self.mail = base / "mail"
        self.proc: subprocess.Popen[bytes] | None = None

    def set_deny(self, line: str) -> None:
        """Replace the rule, in place: the bind mount shows this inode, read per connection."""
        with self.deny.open("w") as out:
            out.write(line + "\n")

    def _command(self) -> list[str]:
        if self.service == "sshd":
            key = self.base / "host_key"
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
            (self.base / "sshd_config").write_text(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {key}\n"
                f"PidFile {self.base}/sshd.pid\nUsePAM no\nMaxStartups 10000\n"
            )
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
            return [SSHD, "-D", "-e", "-f", str(self.base / "sshd_config")]
        # tcpd names the service by its argv[0]: in.fingerd, never run (every client refused).
        (self.base / "inetd.conf").write_text(
            f"127.0.0.1:{self.port} stream tcp nowait root {TCPD} in.fingerd\n"
        )
        return [INETD, "-i", "-R", "100000", str(self.base / "inetd.conf")]

    def start(self) -> None:
        (self.base / "hosts.allow").write_text("")
        if not self.deny.exists():
            self.set_deny("")
        for name in ("mail", "exim-spool", "exim-log"):
            (self.base / name).mkdir(exist_ok=True)
        shutil.chown(self.base / "exim-spool", "Debian-exim", "Debian-exim")
        shutil.chown(self.base / "exim-log", "Debian-exim", "Debian-exim")
        (self.base / "mail").chmod(0o1777)
        mounts = [
            (self.base / "hosts.allow", "/etc/hosts.allow"),
            (self.deny, "/etc/hosts.deny"),
            (self.base / "mail", "/var/mail"),
            (self.base / "exim-spool", "/var/spool/exim4"),
            (self.base / "exim-log", "/var/log/exim4"),
        ]
        script = " && ".join(
            f"mount --bind {src} {dst}" for src, dst in mounts if Path(dst).exists()
        )
        argv = [*self.prefix(), "unshare", "-m", "--propagation", "private", "sh", "-c"]
        argv.append(f'{script} && exec "$@"')
        with (self.base / f"{self.service}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "wrapped", *self._command()], stdin=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 20
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.base / f"{self.service}.log").read_text(errors="replace")
                raise RuntimeError(f"{self.service} did not start: {log_text[-2000:]}")
            time.sleep(0.05)

    def prefix(self) -> list[str]:
        """What runs the service's command elsewhere (another network namespace)."""
        return []

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def refuse(self, count: int = 1, pause: float = 0.0) -> None:
        """`count` connections from REFUSED_FROM, each closed at once: a refused child sleeps
        5 s in libwrap's clean_exit(), so waiting for the server would only wait."""
        for _ in range(count):
            with socket.socket() as sock:
                sock.bind((REFUSED_FROM, 0))
                sock.connect(("127.0.0.1", self.port))
            time.sleep(pause)

    def mails(self) -> int:
        """Messages delivered to the private /var/mail (mbox "From " lines)."""
        total = 0
        for box in self.mail.iterdir():
            total += sum(line.startswith(b"From ") for line in box.read_bytes().splitlines())
        return total

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Inetd(Wrapped):
    """openbsd-inetd serving `lines` (inetd.conf lines, each with "{port}" for a port of
    its own and "{tcpd}" for tcpd's path), inside the network namespace that process
    `netns` holds; `ports[i]` is line i's port (`port` the first's)."""

    def __init__(self, base: Path, lines: list[str], netns: int) -> None:
        super().__init__(base, "inetd")
        self.netns = netns
        self.ports = [7000 + i for i in range(len(lines))]  # a fresh namespace: all free
        self.port = self.ports[0]
        self.lines = [
            line.format(port=port, tcpd=TCPD) for line, port in zip(lines, self.ports, strict=True)
        ]

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.netns), "-n"]

    def _command(self) -> list[str]:
        (self.base / "inetd.conf").write_text("".join(line + "\n" for line in self.lines))
        return [INETD, "-i", "-R", "100000", str(self.base / "inetd.conf")]

    def _listening(self) -> bool:
        """Every line's port is bound (TCP listening or UDP) in the namespace."""
        done = subprocess.run(
            [*self.prefix(), "ss", "-H", "-l", "-n", "-t", "-u"],
            capture_output=True,
            text=True,
            check=False,
        )
        bound = {row.split()[4].rpartition(":")[2] for row in done.stdout.splitlines() if row}
        return {str(port) for port in self.ports} <= bound
