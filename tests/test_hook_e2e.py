"""The alarm that says when it is broken, end to end: `wrapalert run` in a private mount
namespace whose /etc/hosts.allow and /etc/hosts.deny are files of ours (bind-mounted, as
tests/wrapped.py does), with its default [hook] paths and a Maildir sink.

The hook watch: removing the line, shadowing it with an allow rule, dropping the final
newline and pointing it at another socket each give exactly one alarm-off notice (a
mail of its own, `X-Wrapalert-Notice: alarm-off`) within 10 s and make `wrapalert
status` exit 1 naming it; restoring gives one alarm-on; unrelated edits give nothing;
a new bind mount over /etc/hosts.deny is seen too.

The canary, run in the daemon's mount namespace (real libwrap reads the same tables):
passes through the real logger and through the client fallback, and its events never
reach the pipeline (no digest, `received` stays 0); fails, naming the rule, when the
line sends elsewhere, and when there is no line.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    PYTHON,
    WRAPALERT,
    DaemonProcess,
    libwrap_available,
    maildir_messages,
    require,
    wait_until,
    write_config,
)

from wrapalert import config, hostsdeny
from wrapalert.cli import hosts_deny_line

pytestmark = pytest.mark.system

ALLOW = "sshd : 192.0.2.0/255.255.255.0\n"  # an admin network, as --install writes it
WITHIN = 10.0  # seconds: the brief's bound for a notice after an edit


class Namespaced:
    """The daemon with /etc/hosts.allow and /etc/hosts.deny of its own."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.allow, self.deny = base / "hosts.allow", base / "hosts.deny"
        self.config = write_config(base, hook="", group_wait="200ms")
        self.cfg = config.load(self.config)
        self.line = hosts_deny_line(self.cfg, PYTHON, form="durable") + "\n"
        self.good = "# wrapalert's hook\n" + self.line
        self.allow.write_text(ALLOW)
        self.deny.write_text(self.good)
        self.daemon = DaemonProcess(base, self.config)

    def start(self) -> None:
        script = (
            f"mount --bind {self.allow} /etc/hosts.allow && "
            f'mount --bind {self.deny} /etc/hosts.deny && exec "$@"'
        )
        prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "wrapped")
        self.daemon.start(prefix=prefix)

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid  # unshare and sh exec: the daemon itself

    def inside(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`argv` in the daemon's mount namespace (its /etc/hosts.*)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def notices(self, kind: str | None = None) -> list[str]:
        """The notices' kinds (or subjects of `kind`) in the Maildir, oldest first."""
        found = []
        for msg in maildir_messages(self.base / "Maildir"):
            got = msg.get("X-Wrapalert-Notice")
            if got is not None and kind in (None, got):
                found.append(str(msg["Subject"]) if kind else str(got))
        return found

    def told(self, kind: str, count: int) -> Callable[[], bool]:
        """Whether `count` notices of `kind` arrived (for wait_until)."""
        return lambda: len(self.notices(kind)) == count

    def digests(self) -> int:
        return sum(
            m.get("X-Wrapalert-Notice") is None for m in maildir_messages(self.base / "Maildir")
        )

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WRAPALERT, "status", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def write(self, path: Path, text: str) -> None:
        """In place, as the bind mount needs (the mount holds this inode)."""
        with path.open("w") as f:
            f.write(text)


@pytest.fixture
def ns(sockdir: Path) -> Iterator[Namespaced]:
    for table in ("/etc/hosts.allow", "/etc/hosts.deny"):
        require(Path(table).exists(), f"{table} is missing: nothing to bind-mount over")
    require(Path("/usr/bin/nsenter").exists(), "nsenter is missing (util-linux)")
    n = Namespaced(sockdir)
    n.start()
    try:
        yield n
    finally:
        n.daemon.close()


def test_each_breakage_is_one_alarm_off_and_its_fix_one_alarm_on(ns: Namespaced) -> None:
    wrong = str(ns.cfg.daemon.socket).replace("notify.sock", "other.sock")
    breakages = {
        "the line removed": (ns.deny, "# wrapalert's hook\nALL : PARANOID\n"),
        "shadowed by an allow rule": (ns.allow, ALLOW + "ALL : ALL\n"),
        "the final newline dropped": (ns.deny, ns.good.rstrip("\n")),
        "another socket": (ns.deny, ns.good.replace(str(ns.cfg.daemon.socket), wrong)),
    }
    time.sleep(3)  # the first check ran at start: nothing to tell
    assert ns.notices() == [], ns.daemon.log()
    assert ns.status().returncode == 0
    for n, (what, (path, text)) in enumerate(breakages.items(), start=1):
        ns.write(path, text)
        wait_until(ns.told("alarm-off", n), WITHIN, f"alarm-off: {what}")
        shown = ns.status()
        assert shown.returncode == 1, what
        assert "ALARM OFF" in shown.stdout
        assert str(path).rsplit("/", 1)[1] in shown.stdout  # the file it is about
        ns.write(ns.allow, ALLOW)
        ns.write(ns.deny, ns.good)
        wait_until(ns.told("alarm-on", n), WITHIN, f"alarm-on: {what}")
        assert ns.status().returncode == 0, what
    subjects = ns.notices("alarm-off")
    assert "no rule runs the hook" in subjects[0]
    assert "/etc/hosts.allow" in subjects[1]
    assert "newline" in subjects[2]
    # Unrelated edits: a comment, another service's rule, another admin network.
    ns.write(ns.deny, "# edited\n" + ns.good + "in.ftpd : 198.51.100.7\n")
    ns.write(ns.allow, ALLOW + "sshd : 10.0.0.0/255.0.0.0\n")
    time.sleep(6)
    assert ns.notices() == ["alarm-off", "alarm-on"] * len(breakages)


def test_a_new_bind_mount_over_hosts_deny_is_seen(ns: Namespaced) -> None:
    """Another file mounted over /etc/hosts.deny (its own inode; the watched path is the
    same): seen like an edit; unmounting it is the fix."""
    other = ns.base / "hosts.deny.other"
    other.write_text("ALL : PARANOID\n")
    assert ns.inside("mount", "--bind", str(other), "/etc/hosts.deny").returncode == 0
    wait_until(lambda: ns.notices() == ["alarm-off"], WITHIN, "alarm-off after the mount")
    assert ns.inside("umount", "/etc/hosts.deny").returncode == 0
    wait_until(lambda: ns.notices() == ["alarm-off", "alarm-on"], WITHIN, "alarm-on")


def canary(ns: Namespaced, timeout: str = "5") -> subprocess.CompletedProcess[str]:
    require(libwrap_available(), "libwrap.so.0 is missing (apt-get install libwrap0)")
    return ns.inside(WRAPALERT, "canary", "-c", str(ns.config), "--timeout", timeout)


@pytest.mark.parametrize(
    "form", ["durable", "logger", "fallback"], ids=["durable", "logger", "client-fallback"]
)
def test_the_canary_passes_and_its_events_never_reach_the_pipeline(
    ns: Namespaced, form: str
) -> None:
    """The durable line, the logger line alone (real logger), and the durable line whose
    logger fails (/bin/false: the client fallback sends it)."""
    require(Path(hostsdeny.LOGGER).exists(), f"{hostsdeny.LOGGER} is missing (bsdutils)")
    if form == "fallback":
        line = hosts_deny_line(ns.cfg, PYTHON, form="durable", logger="/bin/false")
    else:
        line = hosts_deny_line(ns.cfg, PYTHON, form=form)  # type: ignore[arg-type]
    ns.write(ns.deny, line + "\n")
    done = canary(ns)
    assert done.returncode == 0, done.stdout + done.stderr + ns.daemon.log()
    assert "every hook rule reached wrapalert (1 of 1)" in done.stdout
    assert "/etc/hosts.deny line 1: sshd from 198.51.100.254: arrived" in done.stdout
    status = ns.daemon.status()
    assert status["received"] == 0  # never an event: no digest, ban, scan, story or twin
    assert status["hook"]["canary"]["ok"] is True
    assert status["hook"]["canary"]["events"] >= 1
    assert status["hook"]["canary"]["last_success"] is not None
    subprocess.run([WRAPALERT, "flush", "-c", str(ns.config)], check=True, capture_output=True)
    time.sleep(1.5)
    assert ns.digests() == 0


def test_the_canary_fails_naming_the_rule_whose_event_never_came(ns: Namespaced) -> None:
    """The line sends to another daemon's socket and spool (another config's line):
    libwrap runs it, nothing arrives here; exit 1 naming the rule; the canary's problem
    is open (status exits 1 naming it)."""
    other = ns.base / "other"
    other.mkdir()
    line = hosts_deny_line(config.load(write_config(other)), PYTHON, form="durable")
    ns.write(ns.deny, "# hook\n" + line + "\n")
    done = canary(ns, "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout, done.stderr + ns.daemon.log()[-3000:]
    assert "/etc/hosts.deny line 2: sshd from 198.51.100.254: FAILED" in done.stdout
    assert "did not arrive within 2 s" in done.stdout
    problems = ns.daemon.status()["hook"]["problems"]
    assert any(p["source"] == "canary" and p["line"] == 2 for p in problems)
    status = ns.status()
    assert status.returncode == 1
    assert "the canary's refusal by this rule never reached wrapalert" in status.stdout


def test_the_canary_without_a_hook_line_fails_saying_so(ns: Namespaced) -> None:
    ns.write(ns.deny, "ALL : PARANOID\n")
    done = canary(ns, "2")
    assert done.returncode == 1
    assert "no rule of /etc/hosts.deny runs wrapalert's hook" in done.stdout
