"""End to end through real wrapped services, Debian's sshd and in.fingerd under inetd and
tcpd: the default hosts.deny line, pasted as printed (but for the client list), reports
each refused TCP connection once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import WRAPALERT, DaemonProcess, jsonl_events, require, wait_until
from wrapped import REFUSED_FROM, Wrapped, missing

from wrapalert import hostsdeny

pytestmark = pytest.mark.system


@pytest.fixture(params=["sshd", "inetd"])
def service(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[Wrapped]:
    """sshd (linked with libwrap), or openbsd-inetd running in.fingerd through tcpd."""
    name: str = request.param
    reason = missing(name)
    require(reason is None, reason or "")
    require(
        Path(hostsdeny.LOGGER).exists(), "util-linux logger is missing (apt-get install bsdutils)"
    )
    wrapped = Wrapped(sockdir, name)
    yield wrapped
    wrapped.stop()


def printed_line(cfg_path: Path, daemons: str) -> str:
    """What `wrapalert hosts-deny-line` prints, refusing only REFUSED_FROM."""
    result = subprocess.run(
        [WRAPALERT, "hosts-deny-line", "-c", str(cfg_path), "--daemons", daemons],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    line = result.stdout.strip()
    assert line.startswith(f"{daemons} : ALL : ")
    return line.replace(" : ALL : ", f" : {REFUSED_FROM} : ", 1)


def test_each_refusal_reaches_the_daemon_once(
    service: Wrapped, sockdir: Path, cfg_path: Path
) -> None:
    """Five refused TCP connections become five trusted events naming the service and
    127.0.0.2, each from its own service process (no duplicate), none spooled."""
    daemon_name = "sshd" if service.service == "sshd" else "in.fingerd"
    service.set_deny(printed_line(cfg_path, daemon_name))
    daemon = DaemonProcess(sockdir, cfg_path)
    try:
        daemon.start()
        service.start()
        service.refuse(5, pause=0.05)
        wait_until(lambda: len(jsonl_events(sockdir)) >= 5, timeout=30, what="five events")
        got = jsonl_events(sockdir)
        status = daemon.status()
    finally:
        service.stop()
        daemon.close()
    assert len(got) == 5
    assert {(r["daemon"], r["client_addr"], r["trusted"]) for r in got} == {
        (daemon_name, REFUSED_FROM, True)
    }
    assert len({r["daemon_pid"] for r in got}) == 5
    assert status["spooled"] == 0  # logger carried them all


def test_refusals_while_the_daemon_is_down_wait_in_the_spool(
    service: Wrapped, sockdir: Path, cfg_path: Path
) -> None:
    """With no daemon and no socket the same line spools each refusal; a daemon started
    later reports them, once each."""
    daemon_name = "sshd" if service.service == "sshd" else "in.fingerd"
    service.set_deny(printed_line(cfg_path, daemon_name))
    try:
        service.start()
        service.refuse(3, pause=0.05)
        spool = sockdir / "spool"
        wait_until(lambda: len(list(spool.iterdir())) >= 3, timeout=30, what="three spool files")
    finally:
        service.stop()
    assert not (sockdir / "notify.sock").exists()
    daemon = DaemonProcess(sockdir, cfg_path)
    try:
        daemon.start()
        wait_until(lambda: len(jsonl_events(sockdir)) >= 3, timeout=30, what="three events")
        assert daemon.status()["spooled"] == 3
    finally:
        daemon.close()
    assert {(r["daemon"], r["client_addr"]) for r in jsonl_events(sockdir)} == {
        (daemon_name, REFUSED_FROM)
    }
