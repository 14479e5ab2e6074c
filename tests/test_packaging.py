"""Packaging: the systemd units verify cleanly and are hardened; the man page renders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import EXPOSURE_MAX, EXPOSURE_MAX_NFTABLES, WRAPALERT, require

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    require(tool is not None, "systemd-analyze not found (apt-get install systemd)")
    assert tool is not None
    return tool


def units_here(tmp_path: Path) -> Path:
    """The units, with ExecStart pointing at this checkout's wrapalert (verify checks it)."""
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("ExecStart=/usr/bin/wrapalert", f"ExecStart={WRAPALERT}")
        (tmp_path / unit.name).write_text(text)
    return tmp_path


@pytest.mark.system
def test_units_verify_without_a_word(tmp_path: Path) -> None:
    """systemd-analyze verify says nothing about the socket and service units, nor the
    canary's service and timer (it exits 0 even on unknown keys, so any output is a
    failure)."""
    here = units_here(tmp_path)
    units = ["wrapalert.socket", "wrapalert.service"]
    units += ["wrapalert-canary.service", "wrapalert-canary.timer"]
    result = subprocess.run(
        [analyze(), "verify", "--man=no", *units],
        cwd=here,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def unit_root(tmp_path: Path) -> Path:
    """A root holding the units where the package installs them, /usr/lib/systemd/system:
    `security --root` reads them (and drop-ins) there and nothing of the host's /etc.
    (systemd 257 no longer looks in <root>/lib/systemd/system.)"""
    system = tmp_path / "usr" / "lib" / "systemd" / "system"
    system.mkdir(parents=True)
    units_here(system)
    return tmp_path


@pytest.mark.system
def test_service_is_hardened(tmp_path: Path) -> None:
    """The service's exposure, as systemd-analyze security rates it offline, stays low."""
    exposure, _failed = _exposures(unit_root(tmp_path))
    assert exposure <= EXPOSURE_MAX


@pytest.mark.system
def test_the_canary_is_hardened_as_far_as_root_allows(tmp_path: Path) -> None:
    """The canary runs as root (the hook does), yet with one capability, no network and a
    read-only system: systemd-analyze security rates it OK (at most 2.0 of 10)."""
    root = unit_root(tmp_path)
    name = "wrapalert-canary.service"
    result = subprocess.run(
        [analyze(), "security", "--offline=yes", f"--root={root}", "--no-pager", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_the_canary_timer_runs_daily_and_after_boot() -> None:
    timer = (UNITS / "wrapalert-canary.timer").read_text()
    service = (UNITS / "wrapalert-canary.service").read_text()
    assert "OnCalendar=daily" in timer
    assert re.search(r"^OnBootSec=\d+min$", timer, re.MULTILINE)
    assert "WantedBy=timers.target" in timer
    assert "ExecStart=/usr/bin/wrapalert canary" in service
    assert "Type=oneshot" in service


def test_socket_unit_matches_the_platform_facts() -> None:
    """The socket passes credentials, is writable by every user, and the service does not
    set RuntimeDirectory= (which would delete the socket node)."""
    socket_unit = (UNITS / "wrapalert.socket").read_text()
    service = (UNITS / "wrapalert.service").read_text()
    assert "ListenDatagram=/run/wrapalert/notify.sock" in socket_unit
    assert "PassCredentials=yes" in socket_unit
    assert "SocketMode=0666" in socket_unit
    assert not re.search(r"^RuntimeDirectory=", service, re.MULTILINE)
    assert "Type=notify" in service


@pytest.mark.system
def test_man_page_renders_without_warnings() -> None:
    """groff renders wrapalert(8) with every warning enabled and says nothing."""
    groff = shutil.which("groff")
    require(groff is not None, "groff not found (apt-get install groff-base)")
    assert groff is not None
    page = ROOT / "packaging" / "man" / "wrapalert.8"
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")


def _exposures(root: Path) -> tuple[float, set[str]]:
    """The service's overall exposure and the settings it is marked down for, with the
    units (and drop-ins) under `root` as the system's."""
    result = subprocess.run(
        [
            analyze(),
            "security",
            "--offline=yes",
            "--no-pager",
            f"--root={root}",
            "wrapalert.service",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for wrapalert.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    failed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("✗")}
    return float(match.group(1)), failed


def test_service_runs_as_its_own_user_without_capabilities() -> None:
    """The service runs as user and group wrapalert, with an empty capability bounding set
    and no ambient capabilities, and the package makes that user (sysusers.d)."""
    service = (UNITS / "wrapalert.service").read_text()
    settings = re.findall(r"^(User|Group|CapabilityBoundingSet|AmbientCapabilities)=(.*)$",
                          service, re.MULTILINE)  # fmt: skip
    assert settings == [
        ("User", "wrapalert"),
        ("Group", "wrapalert"),
        ("CapabilityBoundingSet", ""),
    ]
    sysusers = (ROOT / "packaging/debian/wrapalert.sysusers").read_text()
    assert re.search(r"^u wrapalert - ", sysusers, re.MULTILINE)


def test_spool_and_runtime_dirs_belong_to_the_daemon() -> None:
    """tmpfiles makes the spool the daemon's (sticky, setgid wrapalert), root's own spool
    2770 root:wrapalert, and /run/wrapalert the daemon's (its control socket goes there)."""
    lines = {
        tuple(line.split()[:5])
        for line in (ROOT / "packaging/tmpfiles/wrapalert.conf").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert lines == {
        ("d", "/var/spool/wrapalert", "3777", "wrapalert", "wrapalert"),
        ("d", "/var/spool/wrapalert/0", "2770", "root", "wrapalert"),
        ("d", "/run/wrapalert", "0755", "wrapalert", "wrapalert"),
    }


@pytest.mark.system
def test_nftables_drop_in_adds_exactly_net_admin(tmp_path: Path) -> None:
    """The documented drop-in opens CAP_NET_ADMIN (bounding and ambient: the service is
    not root) and the host's user namespace (where the capability counts), and nothing
    else (AF_NETLINK, which nft speaks, the plain unit allows for its evidence lookups)."""
    unit_root(tmp_path)
    plain = _exposures(tmp_path)
    drop_ins = tmp_path / "etc" / "systemd" / "system" / "wrapalert.service.d"
    drop_ins.mkdir(parents=True)
    shutil.copy(ROOT / "packaging" / "examples" / "wrapalert-nftables.conf", drop_ins / "n.conf")
    with_sink = _exposures(tmp_path)
    assert with_sink[1] - plain[1] == {
        "AmbientCapabilities=",
        "CapabilityBoundingSet=~CAP_NET_ADMIN",
        "PrivateUsers=",
    }
    assert "RestrictAddressFamilies=~AF_NETLINK" in plain[1]  # sock_diag (daemon/witness.py)
    assert plain[1] <= with_sink[1]  # the unit's own restrictions all stay
    assert plain[0] <= EXPOSURE_MAX
    assert with_sink[0] <= EXPOSURE_MAX_NFTABLES


@pytest.mark.system
def test_fleet_drop_in_adds_a_credential_and_peers_only(tmp_path: Path) -> None:
    """The documented fleet drop-in verifies without a word and changes no exposure:
    LoadCredential= hands the password to the service alone, IPAddressAllow= adds the
    peers to the loopback the unit allows."""
    root = unit_root(tmp_path)
    plain = _exposures(root)
    drop_ins = root / "etc" / "systemd" / "system" / "wrapalert.service.d"
    drop_ins.mkdir(parents=True)
    shutil.copy(ROOT / "packaging" / "examples" / "wrapalert-fleet.conf", drop_ins / "f.conf")
    assert _exposures(root) == plain
    text = (drop_ins / "f.conf").read_text()
    assert "LoadCredential=alertmanager-password:/etc/wrapalert/alertmanager-password" in text
    (tmp_path / "verify").mkdir()
    here = units_here(tmp_path / "verify")
    (here / "wrapalert.service.d").mkdir()
    shutil.copy(drop_ins / "f.conf", here / "wrapalert.service.d" / "f.conf")
    result = subprocess.run(
        [analyze(), "verify", "--man=no", "wrapalert.service"],
        cwd=here,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
