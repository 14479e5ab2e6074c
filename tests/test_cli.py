"""The `wrapalert` command: hosts-deny-line, check-config, notify, exit codes."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import PYTHON, WRAPALERT, libwrap_available, receiver, require, write_config

from wrapalert import hostsdeny, notify, wire
from wrapalert.cli import format_bans, format_status, status_exit
from wrapalert.libwrap import LibWrap


def wrapalert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WRAPALERT, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_default_line_is_exact() -> None:
    """With default paths the line names interpreter, client and expansions, and ends in '&'."""
    line = hostsdeny.spawn_line("/usr/bin/python3", Path("/usr/lib/wa/notify.py"))
    assert line == (
        "ALL : ALL : spawn (/usr/bin/python3 -I -S /usr/lib/wa/notify.py "
        "d=%d p=%p c=%c a=%a n=%n s=%s A=%A r=%r R=%R) &"
    )


def test_ident_is_opt_in() -> None:
    """%u (an IDENT lookup that can stall the service 10 s) appears only with ident=True."""
    plain = hostsdeny.spawn_line("/usr/bin/python3", Path("/n.py"))
    assert "%u" not in plain
    assert " u=%u)" in hostsdeny.spawn_line("/usr/bin/python3", Path("/n.py"), ident=True)


def test_non_default_paths_are_written_into_the_line() -> None:
    """A socket or spool other than the client's defaults is passed on; defaults are not."""
    default = hostsdeny.spawn_line(
        "/p", Path("/n.py"), socket=Path(notify.SOCKET), spool=Path(notify.SPOOL)
    )
    assert "socket=" not in default
    assert "spool=" not in default
    custom = hostsdeny.spawn_line(
        "/p", Path("/n.py"), socket=Path("/srv/wa.sock"), spool=Path("/srv/spool")
    )
    assert "socket=/srv/wa.sock spool=/srv/spool)" in custom


def test_colons_percents_and_spaces_in_paths_are_escaped() -> None:
    """':' becomes '\\:' and '%' becomes '%%' for libwrap; spaces are shell-quoted."""
    line = hostsdeny.spawn_line("/opt/py 3.11/python", Path("/a:b/100%/notify.py"))
    assert "spawn ('/opt/py 3.11/python' -I -S /a\\:b/100%%/notify.py d=%d" in line


def test_bad_daemon_list_is_refused() -> None:
    """A daemon list that would change the rule's meaning (':' or spaces) is refused."""
    with pytest.raises(ValueError, match="bad daemon list"):
        hostsdeny.spawn_line("/p", Path("/n.py"), daemons="sshd : ALL")
    assert hostsdeny.spawn_line("/p", Path("/n.py"), daemons="sshd,vsftpd").startswith(
        "sshd,vsftpd : ALL : spawn"
    )


@pytest.mark.system
def test_escaped_line_works_in_real_libwrap(sockdir: Path, tmp_path: Path) -> None:
    """A client path with ':', '%' and a space still runs when libwrap spawns the line."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    odd = tmp_path / "we:ird 100%"
    odd.mkdir()
    shutil.copy(notify.__file__, odd / "notify.py")
    path = sockdir / "notify.sock"
    line = hostsdeny.spawn_line(PYTHON, odd / "notify.py", socket=path)
    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text(line + "\n")
    wrap = LibWrap(tmp_path / "hosts.allow", tmp_path / "hosts.deny")
    with receiver(path) as sock:
        sock.settimeout(10)
        assert not wrap.allowed("sshd", "192.0.2.5")
        data = sock.recv(8192)
    assert wire.parse(data)["client_addr"] == "192.0.2.5"


def test_hosts_deny_line_command_uses_the_config(sockdir: Path) -> None:
    """`wrapalert hosts-deny-line -c FILE` writes that config's socket and spool into the line."""
    cfg = write_config(sockdir)
    result = wrapalert("hosts-deny-line", "-c", str(cfg), "--daemons", "sshd")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("sshd : ALL : spawn (")
    assert f" -u {sockdir}/notify.sock " in line  # logger's socket
    assert f"socket={sockdir}/notify.sock spool={sockdir}/spool wait=0) &" in line
    assert str(Path(notify.__file__).resolve()) in line


def test_check_config_reports_ok_and_summary(sockdir: Path) -> None:
    """check-config on a good file exits 0 and summarises what it will do."""
    result = wrapalert("check-config", "-c", str(write_config(sockdir)))
    assert result.returncode == 0
    assert result.stdout.startswith(f"ok: {sockdir}/wrapalert.toml")
    assert f"sink maildir: maildir {sockdir}/Maildir" in result.stdout


def test_check_config_notes_trusted_uids_the_packaged_service_cannot_see(
    sockdir: Path,
) -> None:
    """A non-root trusted uid is valid, but the packaged service (PrivateUsers=yes)
    refuses it: check-config says so and names the fix; with root alone it says nothing."""
    path = write_config(sockdir)
    text = path.read_text()
    path.write_text(re.sub(r"trusted_uids = \[\d+\]", "trusted_uids = [0, 1000]", text))
    result = wrapalert("check-config", "-c", str(path))
    assert result.returncode == 0
    assert "note: trusted uids [1000] are not root" in result.stdout
    assert "PrivateUsers=no" in result.stdout
    path.write_text(re.sub(r"trusted_uids = \[\d+\]", "trusted_uids = [0]", text))
    assert "note:" not in wrapalert("check-config", "-c", str(path)).stdout


def test_check_config_names_the_problem(sockdir: Path) -> None:
    """check-config on a bad file exits 1 with file, line and key on stderr."""
    cfg = write_config(sockdir, extra="bogus = 1\n")
    result = wrapalert("check-config", "-c", str(cfg))
    assert result.returncode == 1
    assert f"{cfg}:" in result.stderr
    assert "[[sink]] #1 bogus: unknown key" in result.stderr


def test_usage_errors_exit_2() -> None:
    """An unknown verb or option is a usage error: exit 2."""
    assert wrapalert("frobnicate").returncode == 2
    assert wrapalert("check-config", "--frob").returncode == 2


def test_notify_verb_takes_no_options(sockdir: Path) -> None:
    """`wrapalert notify` treats '--help' and '-x' as data, sends, prints nothing, exits 0."""
    path = sockdir / "notify.sock"
    with receiver(path) as sock:
        sock.settimeout(10)
        result = wrapalert("notify", "--help", "-x", "d=sshd", "u=--version", f"socket={path}")
        data = sock.recv(8192)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert wire.parse(data)["user"] == "--version"


@pytest.mark.system
def test_simulate_without_a_daemon_spools(sockdir: Path) -> None:
    """`wrapalert simulate` runs the real hook: with no daemon, the events land in the spool."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    cfg = write_config(sockdir)
    (sockdir / "spool").mkdir()
    result = wrapalert(
        "simulate", "-c", str(cfg), "--count", "2", "--daemons", "sshd", "--from", "192.0.2.1"
    )
    assert result.returncode == 0, result.stderr
    assert "libwrap refused 2 of 2 connections" in result.stdout
    deadline = time.monotonic() + 10
    # The spawned clients run in the background ('&'): wait for their files, bounded.
    while len(files := list((sockdir / "spool").iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(files) == 2
    assert all(wire.parse(f.read_bytes())["daemon"] == "sshd" for f in files)


def test_a_daemon_list_cannot_split_the_line() -> None:
    """A newline in --daemons would make two hosts.deny lines: refused."""
    with pytest.raises(ValueError, match="bad daemon list"):
        hostsdeny.spawn_line("/p", Path("/n.py"), daemons="sshd\n,vsftpd")


# -- the fleet in `ban list` and `status` ---------------------------------------------------

FLEET_BANS = {
    "mode": "enforce",
    "table": "wrapalert",
    "bans": [
        {"target": "203.0.113.7", "reason": "3 refusals", "until": 2e9, "dry_run": False,
         "origin": "local", "hosts": []},
        {"target": "198.51.100.9", "reason": "fleet: banned on web1, web2", "until": 2e9,
         "dry_run": False, "origin": "fleet", "hosts": ["web1", "web2"]},
    ],
}  # fmt: skip


def test_ban_list_shows_this_hosts_bans_and_the_fleets_apart() -> None:
    """`ban list` lists this host's own bans and counts the fleet's; `--fleet` the reverse."""
    mine = format_bans(FLEET_BANS)
    assert mine.splitlines()[0].startswith("203.0.113.7 ")
    assert "198.51.100.9" not in mine
    assert (
        mine.splitlines()[1] == "and 1 ban(s) followed from the fleet: wrapalert ban list --fleet"
    )
    theirs = format_bans(FLEET_BANS, fleet=True)
    assert theirs.splitlines()[0].startswith("198.51.100.9 ")
    assert theirs.splitlines()[0].endswith("fleet: banned on web1, web2")
    assert theirs.splitlines()[1] == "and 1 ban(s) of this host's own: wrapalert ban list"
    none = format_bans({**FLEET_BANS, "bans": []}, fleet=True)
    assert none == "no fleet bans (table inet wrapalert, mode enforce)"


def fleet_status(*, ok: bool | None, peer_ok: bool | None) -> dict[str, object]:
    book = {"active": 1, "hosts": ["web1"], "added": 3, "ended": 2, "refused": {"session": 1},
            "exceptions": 1, "published": 4}  # fmt: skip
    bans = {"mode": "enforce", "active": 2, "added": 0, "would_ban": 0, "expired": 0,
            "lifted": 0, "refused": {}, "fleet": book}  # fmt: skip
    peer = {"ok": peer_ok, "last_error": "post: HTTP 401 \x1b[2J"}
    fleet = {"sink": "am", "follow": True, "ok": ok, "waiting": 2, "rejected": {"bad_host": 1},
             "peers": {"https://am1:9093": peer}}  # fmt: skip
    return {
        "received": 0, "rejected": {}, "untrusted": 0, "spooled": 0, "groups": 0,
        "pending_events": 0, "outbox": 0, "digests": 0, "sinks": {},
        "state": {"ok": True, "path": "/var/lib/wrapalert/state.db"},
        "bans": bans, "fleet": fleet,
        "heartbeat": {"am": {"interval": 300.0, "sent": None, "last_error": "no answer"}},
    }  # fmt: skip


def test_status_shows_the_fleet_and_fails_when_no_peer_answers() -> None:
    """The fleet's bans apart, every peer with its (printable) error, malformed alerts and
    the heartbeat; exit 1 once no peer answers, 0 while one does or none was asked."""
    cut_off = fleet_status(ok=False, peer_ok=False)
    text = format_status(cut_off)
    assert (
        "fleet bans               1   (from web1; followed 3, ended 2, refused: session 1" in text
    )
    assert (
        "sink am: 4 ban(s) of this host's published; 2 source(s) wait for fleet_min_hosts" in text
    )
    assert "peer https://am1:9093: FAILING: post: HTTP 401 ?[2J" in text
    assert "malformed alerts skipped: bad_host 1" in text
    assert "NO PEER ANSWERS" in text
    assert "heartbeat am: every 300s, not sent yet; FAILING: no answer" in text
    assert status_exit(cut_off) == 1
    assert status_exit(fleet_status(ok=True, peer_ok=True)) == 0
    assert status_exit(fleet_status(ok=None, peer_ok=None)) == 0
