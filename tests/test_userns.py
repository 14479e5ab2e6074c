"""The daemon in a user namespace (the unit's PrivateUsers=yes): root stays trusted, and a
trusted uid the namespace hides is refused with the fix named, at start and at reload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import WRAPALERT, Running, require, wait_until, write_config

from wrapalert import config, userns
from wrapalert.daemon.server import Server
from wrapalert.wire import encode

HIDDEN = 4242  # a uid no namespace below maps
SYSTEMD_MAP = "         0          0          1\n       998        998          1\n"


def uid_map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "uid_map"
    path.write_text(text)
    return path


def test_outside_a_user_namespace_every_uid_is_seen(tmp_path: Path) -> None:
    """The initial namespace's identity map hides nothing."""
    identity = uid_map(tmp_path, "         0          0 4294967295\n")
    assert userns.unmapped([0, 998, 1000, 65534, 4294967294], identity) == []
    assert userns.check_trusted([0, 1000], identity) is None


def test_private_users_hides_all_but_root_and_the_service_user(tmp_path: Path) -> None:
    """systemd's PrivateUsers=yes map (root, the unit's own user): any other trusted uid is
    named, once each, with the way out."""
    private = uid_map(tmp_path, SYSTEMD_MAP)
    assert userns.unmapped([1000, 0, 998, 999, 1000], private) == [999, 1000]
    problem = userns.check_trusted([0, 1000], private)
    assert problem is not None
    assert problem.startswith("trusted_uids [1000]: ")
    assert "uid 65534, untrusted" in problem
    assert "PrivateUsers=no" in problem
    assert userns.check_trusted([0], private) is None
    # Every hidden user reads as 65534 there: trusting 65534 would trust them all.
    assert userns.unmapped([65534], private) == [65534]


def test_an_unreadable_map_hides_nothing(tmp_path: Path) -> None:
    """No /proc (or no such file): uids are taken as the kernel gives them."""
    assert userns.ranges(tmp_path / "missing") is None
    assert userns.unmapped([1000], tmp_path / "missing") == []


def status(path: Path) -> dict[str, object]:
    """`wrapalert status --json` of the daemon configured by `path`."""
    out = subprocess.run(
        [WRAPALERT, "status", "--json", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    answer: dict[str, object] = json.loads(out.stdout)
    return answer


def unshare_user() -> list[str]:
    """A command prefix running in a new user namespace that maps only root (our uid)."""
    tool = shutil.which("unshare")
    require(tool is not None, "unshare is missing (apt-get install util-linux)")
    assert tool is not None
    probe = subprocess.run(
        [tool, "--user", "--map-root-user", "true"], capture_output=True, timeout=10, check=False
    )
    require(probe.returncode == 0, f"user namespaces are not permitted here: {probe.stderr!r}")
    return [tool, "--user", "--map-root-user"]


@pytest.mark.system
def test_the_daemon_in_a_namespace_refuses_a_hidden_trusted_uid(sockdir: Path) -> None:
    """`wrapalert run` in a user namespace that maps only root: trusting root it starts and
    takes a report from root as trusted; trusting a uid the namespace hides as well, it
    exits at once and says which uid and why."""
    prefix = unshare_user()
    path = write_config(sockdir, extra="")
    text = path.read_text().replace(f"trusted_uids = [{os.getuid()}]", "trusted_uids = [0]")
    path.write_text(text)
    proc = subprocess.Popen(
        [*prefix, WRAPALERT, "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until((sockdir / "control.sock").exists, 20, "the namespaced daemon's control socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(encode({"d": "sshd", "a": "192.0.2.8"}), str(sockdir / "notify.sock"))

        wait_until(lambda: status(path)["received"] == 1, 20, "the report")
        # Sent by this process, whose uid the namespace maps to root: trusted.
        assert status(path)["untrusted"] == 0
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

    path.write_text(text.replace("trusted_uids = [0]", f"trusted_uids = [0, {HIDDEN}]"))
    refused = subprocess.run(
        [*prefix, WRAPALERT, "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 1, refused
    assert f"{path}: trusted_uids [{HIDDEN}]: " in refused.stderr
    assert "PrivateUsers=no" in refused.stderr


def test_a_reload_that_trusts_a_hidden_uid_is_refused(
    sockdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen from a namespace that maps only root and this uid, a reload adding a hidden
    trusted uid is refused like any bad config: the old one runs on."""
    path = write_config(sockdir)
    me = os.getuid()
    visible = f"0 0 1\n{me} {me} 1\n" if me else "0 0 1\n"
    monkeypatch.setattr(userns, "UID_MAP", uid_map(tmp_path, visible))

    async def scenario() -> tuple[bool, tuple[int, ...]]:
        server = Server(config.load(path), config_path=path)
        async with Running(server):
            text = path.read_text()
            path.write_text(text.replace(f"= [{me}]", f"= [{me}, {HIDDEN}]"))
            reloaded = server.reload()
            return reloaded, server.cfg.daemon.trusted_uids

    assert asyncio.run(scenario()) == (False, (me,))


@pytest.mark.system
def test_a_hidden_users_fallback_marker_counts_as_untrusted(sockdir: Path) -> None:
    """Another user's syslog fallback marker, seen from a namespace that hides its owner,
    counts as an untrusted fallback (uid 65534, as its datagrams read), not as a bad
    marker."""
    require(os.geteuid() == 0, "giving a file to another uid needs root")
    prefix = unshare_user()
    path = write_config(sockdir)
    path.write_text(path.read_text().replace(f"= [{os.getuid()}]", "= [0]"))
    spool = sockdir / "spool"
    spool.mkdir(mode=0o1777)
    spool.chmod(0o1777)
    marker = spool / f".{HIDDEN}.syslog.1"
    marker.write_bytes(b"\n\n\n")  # one byte per event that went to syslog
    marker.chmod(0o600)
    os.chown(marker, HIDDEN, HIDDEN)
    proc = subprocess.Popen([*prefix, WRAPALERT, "run", "-c", str(path)])
    try:
        wait_until((sockdir / "control.sock").exists, 20, "the control socket")

        def counted() -> dict[str, object] | None:
            answer: dict[str, object] = status(path)
            return answer if answer["syslog_fallbacks"] or answer["rejected"] else None

        wait_until(lambda: counted() is not None, 20, "the marker counted")
        found = counted()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert found is not None
    assert (found["syslog_fallbacks"], found["rejected"]) == ({"untrusted": 3}, {})
    assert not marker.exists()
