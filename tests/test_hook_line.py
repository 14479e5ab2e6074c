"""The three forms of `wrapalert hosts-deny-line`, written out and run by real libwrap."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import PYTHON, WRAPALERT, libwrap_available, receiver, require, write_config

from wrapalert import hostsdeny, notify, wire
from wrapalert.libwrap import LibWrap

NO_LIBWRAP = "libwrap0 is not installed (apt-get install libwrap0)"
NO_LOGGER = "util-linux logger is not installed (apt-get install bsdutils)"
FIELDS = "d=%d p=%p c=%c a=%a n=%n s=%s A=%A r=%r R=%R"
LOGGER_PART = (
    "/usr/bin/timeout {wait} /usr/bin/logger --socket-errors=on -d -u /run/wrapalert/notify.sock "
    "-t wrapalert -p authpriv.notice -- WA1 {fields}"
)


def need_tools() -> None:
    require(libwrap_available(), NO_LIBWRAP)
    require(Path(hostsdeny.LOGGER).exists(), NO_LOGGER)
    require(Path(hostsdeny.TIMEOUT).exists(), "coreutils timeout is missing")


def test_durable_line_is_exact() -> None:
    """The default line: bounded logger, else the client told not to wait, in one '( ) &'."""
    line = hostsdeny.durable_line(
        "/usr/bin/python3", Path("/usr/lib/wa/notify.py"), socket=Path(notify.SOCKET)
    )
    assert line == (
        f"ALL : ALL : spawn ({LOGGER_PART.format(wait='0.1', fields=FIELDS + ' i=$$')} || "
        f"/usr/bin/python3 -I -S /usr/lib/wa/notify.py {FIELDS} i=$$ wait=0) &"
    )


def test_logger_line_is_exact() -> None:
    """The logger-only line is the durable line's first half, with a longer bound (no
    fallback: the bound only stops blocked loggers piling up)."""
    line = hostsdeny.logger_line(hostsdeny.LOGGER, Path(notify.SOCKET))
    assert line == f"ALL : ALL : spawn ({LOGGER_PART.format(wait='0.2', fields=FIELDS)}) &"


def test_ident_reaches_both_halves() -> None:
    """--ident adds u=%u to logger's message and to the client's fields, nowhere else."""
    line = hostsdeny.durable_line("/p", Path("/n.py"), socket=Path("/s"), ident=True)
    assert line.count("u=%u") == 2
    assert "i=$$ u=%u ||" in line
    assert "i=$$ u=%u socket=/s wait=0)" in line


@pytest.mark.parametrize("form", ["durable", "client", "logger"])
def test_every_form_fits_libwrap_even_with_long_paths(form: hostsdeny.Form) -> None:
    """With the longest socket path AF_UNIX allows and long paths elsewhere, each form fits."""
    sock = Path("/" + "s" * 106)  # 107 bytes: sun_path's limit without its NUL
    long = "/" + "d" * 200
    line = {
        "durable": lambda: hostsdeny.durable_line(
            long + "/python3",
            Path(long + "/notify.py"),
            logger=long + "/logger",
            socket=sock,
            spool=Path(long),
            ident=True,
            daemons="sshd,vsftpd,in.fingerd",
        ),
        "client": lambda: hostsdeny.spawn_line(
            long + "/python3", Path(long + "/notify.py"), socket=sock, spool=Path(long), ident=True
        ),
        "logger": lambda: hostsdeny.logger_line(long + "/logger", sock, ident=True),
    }[form]()
    assert len(line.encode()) + 1 < 2048  # libwrap's buffer, newline included


def test_a_line_over_libwrap_limit_is_refused() -> None:
    """A path that would push the line past libwrap's 2047 bytes is refused, not printed."""
    with pytest.raises(ValueError, match="libwrap allows 2046"):
        hostsdeny.durable_line("/" + "p" * 1900, Path("/n.py"), socket=Path("/s"))


def odd_installation(tmp_path: Path, sockdir: Path) -> tuple[Path, Path, Path, Path]:
    """logger, client, socket and spool under paths holding ':', '%' and a space."""
    odd = tmp_path / "we:ird 100%"
    odd.mkdir()
    (odd / "logger").symlink_to(hostsdeny.LOGGER)
    shutil.copy(notify.__file__, odd / "notify.py")
    spool = sockdir / "sp:o%l"
    spool.mkdir()
    return odd / "logger", odd / "notify.py", sockdir / "s:o%k", spool


def refuse(tmp_path: Path, line: str, addr: str) -> None:
    """Real libwrap refuses `addr` for sshd under a hosts.deny holding `line`."""
    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text(line + "\n")
    assert not LibWrap(tmp_path / "hosts.allow", tmp_path / "hosts.deny").allowed("sshd", addr)


def spooled(spool: Path, count: int) -> list[Path]:
    """The spool's complete files once there are `count` (the hook runs in the background)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        files = [p for p in spool.iterdir() if not p.name.startswith(".")]
        if len(files) >= count:
            return files
        time.sleep(0.02)
    return []


@pytest.mark.system
def test_durable_line_with_odd_paths_sends_then_spools(tmp_path: Path, sockdir: Path) -> None:
    """Through real libwrap, the escaped durable line runs logger to the socket while it is
    read, and the client into the spool once it is gone."""
    need_tools()
    logger, client, sock, spool = odd_installation(tmp_path, sockdir)
    line = hostsdeny.durable_line(PYTHON, client, logger=str(logger), socket=sock, spool=spool)
    assert "we\\:ird 100%%" in line
    with receiver(sock) as listening:
        listening.settimeout(10)
        refuse(tmp_path, line, "192.0.2.5")
        data = listening.recv(8192)
    assert data.startswith(b"<")  # logger's syslog line: the fallback did not run
    assert wire.parse(data)["client_addr"] == "192.0.2.5"
    sock.unlink()
    refuse(tmp_path, line, "192.0.2.6")
    (file,) = spooled(spool, 1)
    assert wire.parse(file.read_bytes())["client_addr"] == "192.0.2.6"


@pytest.mark.system
@pytest.mark.parametrize("form", ["client", "logger"])
def test_single_forms_with_odd_paths_reach_the_socket(
    form: hostsdeny.Form, tmp_path: Path, sockdir: Path
) -> None:
    """Through real libwrap, the escaped client-only and logger-only lines reach the socket."""
    need_tools()
    logger, client, sock, spool = odd_installation(tmp_path, sockdir)
    if form == "client":
        line = hostsdeny.spawn_line(PYTHON, client, socket=sock, spool=spool)
    else:
        line = hostsdeny.logger_line(str(logger), sock)
    with receiver(sock) as listening:
        listening.settimeout(10)
        refuse(tmp_path, line, "192.0.2.7")
        data = listening.recv(8192)
    assert data.startswith(b"WA1\n" if form == "client" else b"<")
    assert wire.parse(data)["daemon"] == "sshd"


def wrapalert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WRAPALERT, *args], capture_output=True, text=True, check=False, timeout=30
    )


@pytest.mark.parametrize(
    ("flag", "form"), [((), "durable"), (("--client",), "client"), (("--logger",), "logger")]
)
def test_the_command_prints_each_form(
    flag: tuple[str, ...], form: hostsdeny.Form, sockdir: Path
) -> None:
    """No flag prints the durable line, --client the client's, --logger logger's."""
    result = wrapalert("hosts-deny-line", "-c", str(write_config(sockdir)), *flag)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert ("/usr/bin/logger" in line) == (form != "client")
    assert ("notify.py" in line) == (form != "logger")
    assert (" || " in line) == (form == "durable")


def test_logger_and_client_together_are_a_usage_error() -> None:
    """--logger and --client exclude each other: exit 2."""
    assert wrapalert("hosts-deny-line", "--logger", "--client").returncode == 2
