"""Words that must not mislead (issue 18, item 6): a flush by hand says so, a test alert
has no bogus row, counts of one are singular, the journal gets each line's priority,
status on an idle socket-activated service, --version, help that points only at what
is shipped, and plain seconds for `ban add --for`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    WRAPALERT,
    Running,
    body,
    maildir_messages,
    make_config,
    wait_until,
    write_config,
)

from wrapalert import cli, config, logs, preview
from wrapalert.daemon.server import Server
from wrapalert.mail import Renderer
from wrapalert.model import Digest, alert_test_report
from wrapalert.wire import encode

ROOT = Path(__file__).resolve().parent.parent


# --- flush, test alert, plurals ------------------------------------------------------------


def test_a_flush_by_hand_says_so(sockdir: Path) -> None:
    """`wrapalert flush` (server.flush) sends a digest that says it was flushed by hand, not
    that wrapalert was stopping."""
    cfg = make_config(sockdir, group_wait=3600.0)

    async def scenario() -> None:
        server = Server(cfg)
        async with Running(server):
            assert server.intake is not None
            event = encode({"d": "sshd", "a": "203.0.113.5"})
            server.intake.handle(event, uid=0, pid=1, origin="socket")
            assert server.flush() == 1
            await asyncio.to_thread(
                wait_until, lambda: maildir_messages(sockdir / "Maildir") != [], 10, "the digest"
            )

    asyncio.run(scenario())
    (msg,) = maildir_messages(sockdir / "Maildir")[:1]
    for kind in ("plain", "html"):
        text = body(msg, kind)
        assert "flushed by hand (wrapalert flush): 1 group." in text
        assert "wrapalert was stopping" not in text


def test_a_test_alert_digest_lists_no_source() -> None:
    """The test alert reports no event: no `? +0 ... repeat` row, no Sources section."""
    now = time.time()
    message = Renderer("wrapalert@localhost", ("root",)).render(
        Digest("web1", now, (alert_test_report(now),))
    )
    for kind in ("plain", "html"):
        text = body(message, kind)
        assert "This is a test alert" in text
        assert "Sources" not in text
        assert "? +0" not in text
        assert "repeat" not in text


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    """A repeat offender with one refusal is "(1 try)", one untrusted report "1 event"."""
    events = tmp_path / "events.txt"
    events.write_text("d=sshd a=192.0.2.50 before=30m\nd=sshd a=192.0.2.51 uid=1000\n")
    out = preview.preview(config.Config(), events, "eml").decode()
    assert "(1 try)" in out
    assert "(1 tries)" not in out
    assert "untrusted: 1 event," in out
    assert "1 events" not in out


# --- the journal's priorities ----------------------------------------------------------------


def test_level_prefix_maps_structlog_levels_to_syslog_priorities() -> None:
    prefix = logs.LevelPrefix()
    found = {
        m: prefix(None, m, "x")[:3] for m in ("error", "exception", "warning", "info", "debug")
    }
    assert found == {
        "error": "<3>",
        "exception": "<3>",
        "warning": "<4>",
        "info": "<6>",
        "debug": "<7>",
    }


def test_only_the_stream_named_in_journal_stream_is_the_journal(tmp_path: Path) -> None:
    """JOURNAL_STREAM must name this very stream: an inherited variable on another stream
    (a pipe, a file) gets no prefixes."""
    with (tmp_path / "f").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert logs.journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logs.journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logs.journal_stream(stream, {})


# --- status of an idle, socket-activated service ----------------------------------------------


def status(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WRAPALERT, "status", "-c", str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def held_socket(sockdir: Path) -> Iterator[Path]:
    """The notify socket bound and held, as wrapalert.socket holds it before the service
    starts (no control socket yet)."""
    path = sockdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield path


def test_status_of_an_idle_socket_activated_service_says_so_and_exits_0(
    sockdir: Path, held_socket: Path
) -> None:
    path = write_config(sockdir)
    result = status(path)
    assert result.returncode == 0, result.stderr
    assert f"wrapalert is idle: {held_socket} is listening (socket activation)" in result.stdout
    as_json = status(path, "--json")
    assert json.loads(as_json.stdout) == {"idle": True, "socket": str(held_socket)}


def test_status_with_a_dead_socket_still_exits_1(sockdir: Path) -> None:
    """A socket file nobody holds (a daemon that died) is not idle: not running, exit 1."""
    path = write_config(sockdir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sockdir / "notify.sock"))
    result = status(path)
    assert result.returncode == 1
    assert "wrapalert is not running" in result.stderr


# --- --version, help, ban --for ---------------------------------------------------------------


def test_version_is_the_packages() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    result = subprocess.run([WRAPALERT, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout == f"wrapalert {pyproject['project']['version']}\n"


def _verbs() -> list[list[str]]:
    out = subprocess.run([WRAPALERT, "--help"], capture_output=True, text=True, check=True).stdout
    verbs = re.findall(r"^    ([a-z-]+)(?: |$)", out, re.MULTILINE)
    assert {"run", "notify", "hosts-deny-line", "status", "ban"} <= set(verbs)
    nested = [["silence", v] for v in ("add", "list", "expire")]
    nested += [["ban", v] for v in ("list", "add", "del", "flush")]
    return [[], *([v] for v in verbs), *nested]


# The design notes live beside the source tree; ARCHITECTURE.md is installed with README.
UNSHIPPED = ("DESIGN.md", "PLATFORM.md", "STYLE.md", "../shared")


def test_no_help_points_at_a_file_that_is_not_shipped() -> None:
    """Every verb's --help (notify's own usage too) and every installed text names no file
    the package does not ship."""
    for verb in _verbs():
        out = subprocess.run(
            [WRAPALERT, *verb, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert out, verb
        for name in UNSHIPPED:
            assert name not in out, (verb, name)
    notify = subprocess.run(
        [WRAPALERT, "notify", "--help"], capture_output=True, text=True, check=True
    )
    assert notify.stdout.startswith("usage: wrapalert notify KEY=VALUE...")
    shipped = ["README.md", "packaging/man/wrapalert.8", "packaging/man/wrapalert.toml.5",
               "packaging/wrapalert.toml", "packaging/debian/wrapalert.logrotate",
               "packaging/debian/postinst", "ARCHITECTURE.md", "wrapalert/notify.py"]  # fmt: skip
    for name in shipped:
        text = (ROOT / name).read_text()
        for unshipped in UNSHIPPED:
            assert unshipped not in text, (name, unshipped)


def test_notify_help_is_never_taken_from_a_hook_line() -> None:
    """Only a lone -h/--help prints usage; the client's KEY=VALUE words never do (and it
    stays silent: exit 0, no output)."""
    quiet = subprocess.run(
        [WRAPALERT, "notify", "d=sshd", "--help", "socket=/nonexistent/x", "spool=/nonexistent"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")


@pytest.mark.parametrize(("given", "seconds"), [("600", 600.0), ("1.5", 1.5), ("10m", 600.0)])
def test_plain_seconds_are_a_duration_on_the_command_line(given: str, seconds: float) -> None:
    assert cli.duration(given) == seconds


@pytest.mark.parametrize("bad", ["-600", "1e3", "inf", "nan", " 600", "600 s", ""])
def test_other_numbers_are_not(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        cli.duration(bad)


def test_ban_add_for_plain_seconds_is_accepted(sockdir: Path) -> None:
    """`ban add --for 600` passes the parser (no daemon here: exit 1, not a usage error 2);
    `--for 600x` is a usage error that says plain seconds are accepted."""
    path = write_config(sockdir)
    ok = subprocess.run(
        [WRAPALERT, "ban", "add", "203.0.113.9", "--for", "600", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert ok.returncode == 1
    assert "not running" in ok.stderr
    bad = subprocess.run(
        [WRAPALERT, "ban", "add", "203.0.113.9", "--for", "600x", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "or seconds" in bad.stderr
