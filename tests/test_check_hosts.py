"""`wrapalert check-hosts`, and real libwrap doing what each finding predicts.

Every pitfall is a table given twice: to the linter (`checkhosts.lint`, pure)
and to the real library (`LibWrap`: hosts_ctl with temporary tables, running
the matching rule's options, spawn included). Spawned commands run without
`&` where the test reads their effect, so libwrap has waited for them when
hosts_ctl returns and nothing needs polling.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    PYTHON,
    WRAPALERT,
    libwrap_available,
    make_config,
    receiver,
    require,
    write_config,
)

from wrapalert import checkhosts, config, hostsdeny, notify
from wrapalert.cli import hosts_deny_line
from wrapalert.libwrap import LibWrap

NO_LIBWRAP = "libwrap0 is not installed (apt-get install libwrap0)"
TOUCH = shutil.which("touch") or "/usr/bin/touch"
SLEEP = shutil.which("sleep") or "/bin/sleep"
PRINTF = shutil.which("printf") or "/usr/bin/printf"
DAEMON, CLIENT = "sshd", "192.0.2.5"  # the connection every libwrap test asks about
ALLOW_CLIENT = f"{DAEMON}: {CLIENT}\n".encode()
DENY_ALL = b"ALL: ALL\n"


def wrap(tmp_path: Path, *, allow: bytes = b"", deny: bytes = b"") -> LibWrap:
    """Real libwrap reading `allow` and `deny` as its tables."""
    require(libwrap_available(), NO_LIBWRAP)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "hosts.allow").write_bytes(allow)
    (tmp_path / "hosts.deny").write_bytes(deny)
    return LibWrap(tmp_path / "hosts.allow", tmp_path / "hosts.deny")


def allowed(tmp_path: Path, *, allow: bytes = b"", deny: bytes = b"") -> bool:
    return wrap(tmp_path, allow=allow, deny=deny).allowed(DAEMON, CLIENT)


def lint(data: bytes, table: checkhosts.Table = "deny") -> list[tuple[int, str, str]]:
    """(line, severity, message) for each finding, without an installation to compare."""
    return [(f.line, f.severity, f.message) for f in checkhosts.lint(data, "t", table)]


def severities(data: bytes, table: checkhosts.Table = "deny") -> list[tuple[int, str]]:
    return [(line, severity) for line, severity, _ in lint(data, table)]


def finding(data: bytes, phrase: str, table: checkhosts.Table = "deny") -> tuple[int, str, str]:
    """The one finding whose message contains `phrase`."""
    (found,) = [f for f in lint(data, table) if phrase in f[2]]
    return found


def comment(size: int) -> bytes:
    """A comment line of exactly `size` bytes, newline included."""
    return b"#" + b"x" * (size - 2) + b"\n"


def continued(size: int) -> bytes:
    """A rule for another daemon split over 100-byte physical lines, `size` bytes joined."""
    head = b"ftpd: 198.51.100.1"
    body = size - len(head) - 1
    chunks = [b" " * min(100, body - i) for i in range(0, body, 100)]
    return head + b"\\\n".join(chunks) + b"\n"


# --- libwrap's lines: the parser alone -------------------------------------------


def test_logical_lines_join_continuations_and_count_bytes_as_libwrap_buffers_them() -> None:
    """A backslash-newline joins the next line; size counts the joined text and one newline."""
    (line,) = checkhosts.logical_lines(b"sshd: \\\n192.0.2.5\n")
    assert (line.number, line.text, line.size, line.continued) == (1, "sshd: 192.0.2.5", 16, True)


def test_split_at_keeps_ipv6_brackets_whole() -> None:
    """The field separator is the first ':' outside [...], as in Debian's IPv6 patch."""
    assert checkhosts.split_at("[2001:db8::]/32 : spawn x") == ("[2001:db8::]/32 ", " spawn x")


def test_split_options_unescapes_colons() -> None:
    """Options split at each bare ':'; '\\:' is a literal colon inside an option."""
    assert checkhosts.split_options(r"spawn a\:b : allow") == ["spawn a:b ", " allow"]


def test_program_is_the_first_word_after_operators_and_assignments() -> None:
    """The program the shell runs first skips '(' and VAR=value words and is unquoted."""
    words = checkhosts.shell_words("(LANG=C '/opt/my tool' -x) &")
    assert words is not None
    assert checkhosts.program(words) == "/opt/my tool"


# --- missing final newline -----------------------------------------------------------

NO_NEWLINE_DENY = b"ftpd: 198.51.100.1"


def test_lint_missing_final_newline_in_deny_is_an_error() -> None:
    """check-hosts reports a hosts.deny without a final newline as an error that denies all."""
    ((line, severity, message),) = lint(NO_NEWLINE_DENY, "deny")
    assert (line, severity) == (1, "error")
    assert "denies EVERY client" in message


@pytest.mark.system
def test_libwrap_missing_final_newline_in_deny_denies_every_client(tmp_path: Path) -> None:
    """libwrap denies a client no rule names when hosts.deny lacks its final newline."""
    assert allowed(tmp_path / "a", deny=NO_NEWLINE_DENY + b"\n")
    assert not allowed(tmp_path / "b", deny=NO_NEWLINE_DENY)


NO_NEWLINE_ALLOW = ALLOW_CLIENT.rstrip(b"\n")


def test_lint_missing_final_newline_in_allow_is_an_error() -> None:
    """check-hosts reports a hosts.allow without a final newline: its last rule is ignored."""
    ((line, severity, message),) = lint(NO_NEWLINE_ALLOW, "allow")
    assert (line, severity) == (1, "error")
    assert "ignored" in message


@pytest.mark.system
def test_libwrap_missing_final_newline_in_allow_denies_the_client_it_allows(
    tmp_path: Path,
) -> None:
    """libwrap ignores a last hosts.allow line without newline: hosts.deny then refuses."""
    assert allowed(tmp_path / "a", allow=NO_NEWLINE_ALLOW + b"\n", deny=DENY_ALL)
    assert not allowed(tmp_path / "b", allow=NO_NEWLINE_ALLOW, deny=DENY_ALL)


ENDS_IN_CONTINUATION = b"ftpd: 198.51.100.1 \\\n"


def test_lint_file_ending_in_a_continuation_is_an_error() -> None:
    """A last line ending in backslash-newline is reported: libwrap finds no newline after it."""
    assert severities(ENDS_IN_CONTINUATION) == [(1, "error")]


@pytest.mark.system
def test_libwrap_file_ending_in_a_continuation_denies_every_client(tmp_path: Path) -> None:
    """libwrap denies everyone when hosts.deny ends in backslash-newline, despite the newline."""
    assert not allowed(tmp_path, deny=ENDS_IN_CONTINUATION)


# --- long lines --------------------------------------------------------------------


def test_lint_line_of_2048_bytes_with_newline_is_an_error() -> None:
    """2047 bytes with the newline pass; 2048 are reported as an error."""
    assert severities(comment(2047)) == []
    assert severities(comment(2048)) == [(1, "error")]


@pytest.mark.system
def test_libwrap_line_of_2048_bytes_ends_hosts_allow(tmp_path: Path) -> None:
    """After a 2048-byte line (newline included) libwrap ignores the hosts.allow rules below it."""
    assert allowed(tmp_path / "a", allow=comment(2047) + ALLOW_CLIENT, deny=DENY_ALL)
    assert not allowed(tmp_path / "b", allow=comment(2048) + ALLOW_CLIENT, deny=DENY_ALL)


@pytest.mark.system
def test_libwrap_line_of_2048_bytes_in_deny_denies_every_client(tmp_path: Path) -> None:
    """A 2048-byte comment in hosts.deny denies a client no rule names."""
    other = b"ftpd: 198.51.100.1\n"
    assert allowed(tmp_path / "a", deny=comment(2047) + other)
    assert not allowed(tmp_path / "b", deny=comment(2048) + other)


def test_lint_counts_continued_lines_joined() -> None:
    """Joined size counts, not physical: 2047 joined passes even with backslashes over 2047."""
    assert len(continued(2047)) > 2047
    assert severities(continued(2047)) == []
    assert severities(continued(2048)) == [(1, "error")]


@pytest.mark.system
def test_libwrap_counts_continued_lines_joined(tmp_path: Path) -> None:
    """libwrap fails a continued rule of 2048 joined bytes and accepts one of 2047."""
    assert allowed(tmp_path / "a", deny=continued(2047))
    assert not allowed(tmp_path / "b", deny=continued(2048))


# --- options -------------------------------------------------------------------------


def old_style(mark: Path) -> bytes:
    return f"ALL : ALL : ({TOUCH} {mark})\n".encode()


def test_lint_old_style_command_is_an_error_with_spawn_as_fix(tmp_path: Path) -> None:
    """A command without a keyword is an error, and the fix puts `spawn` in front."""
    (finding,) = checkhosts.lint(old_style(tmp_path / "m"), "t", "deny")
    assert finding.severity == "error"
    assert "without a keyword" in finding.message
    assert finding.fix == f"write 'spawn ({TOUCH} {tmp_path / 'm'}) &'"


@pytest.mark.system
def test_libwrap_never_runs_an_old_style_command(tmp_path: Path) -> None:
    """libwrap refuses the keyword-less command: it never runs, while `spawn` runs it."""
    wrap(tmp_path, deny=old_style(tmp_path / "old")).allowed(DAEMON, CLIENT)
    spawned = f"ALL : ALL : spawn {TOUCH} {tmp_path / 'new'}\n".encode()
    wrap(tmp_path, deny=spawned).allowed(DAEMON, CLIENT)
    assert (tmp_path / "new").exists()
    assert not (tmp_path / "old").exists()


@pytest.mark.system
def test_libwrap_option_error_in_allow_denies_the_client(tmp_path: Path) -> None:
    """An old-style rule in hosts.allow makes libwrap deny the very client it names."""
    good = f"{DAEMON}: {CLIENT} : spawn {TOUCH} {tmp_path / 'x'}\n".encode()
    bad = f"{DAEMON}: {CLIENT} : ({TOUCH} {tmp_path / 'y'})\n".encode()
    assert allowed(tmp_path / "a", allow=good, deny=DENY_ALL)
    assert not allowed(tmp_path / "b", allow=bad, deny=DENY_ALL)


def colon_rule(out: Path, *, escaped: bool) -> bytes:
    colon = "\\:" if escaped else ":"
    return f"ALL : ALL : spawn {TOUCH} {out}/a{colon}b\n".encode()


def test_lint_unescaped_colon_in_spawn_is_an_error() -> None:
    """A bare ':' inside a spawn command is an error naming where libwrap cuts it."""
    _, severity, message = finding(colon_rule(Path("/o"), escaped=False), "unescaped ':'")
    assert severity == "error"
    assert f"cuts it to '{TOUCH} /o/a'" in message
    assert not [f for f in lint(colon_rule(Path("/o"), escaped=True)) if "':'" in f[2]]


@pytest.mark.system
def test_libwrap_cuts_the_command_at_an_unescaped_colon(tmp_path: Path) -> None:
    """libwrap runs the command only up to a bare ':'; '\\:' keeps the colon."""
    wrap(tmp_path, deny=colon_rule(tmp_path, escaped=False)).allowed(DAEMON, CLIENT)
    wrap(tmp_path, deny=colon_rule(tmp_path, escaped=True)).allowed(DAEMON, CLIENT)
    assert sorted(p.name for p in tmp_path.glob("a*")) == ["a", "a:b"]


def percent_z(out: Path) -> bytes:
    return f"ALL : ALL : spawn {TOUCH} {out}/x%Zy\n".encode()


def test_lint_unknown_expansion_is_a_warning() -> None:
    """`%Z` in a spawn command is a warning that it expands to nothing."""
    _, severity, message = finding(percent_z(Path("/o")), "%Z")
    assert severity == "warning"
    assert message.startswith("%Z is not a libwrap expansion")


@pytest.mark.system
def test_libwrap_unknown_expansion_expands_to_nothing(tmp_path: Path) -> None:
    """libwrap drops `%Z` entirely: x%Zy becomes xy."""
    wrap(tmp_path, deny=percent_z(tmp_path)).allowed(DAEMON, CLIENT)
    assert [p.name for p in tmp_path.glob("x*")] == ["xy"]


def test_lint_spawn_without_ampersand_is_a_warning() -> None:
    """A spawn command not ending in '&' is a warning; with '&' there is none."""
    ((_, severity, message),) = lint(f"ALL : ALL : spawn {SLEEP} 0.3\n".encode())
    assert severity == "warning"
    assert "without a trailing '&'" in message
    assert lint(f"ALL : ALL : spawn {SLEEP} 0.3 &\n".encode()) == []


@pytest.mark.system
def test_libwrap_waits_for_a_spawn_without_ampersand(tmp_path: Path) -> None:
    """hosts_ctl returns only after `sleep 0.3` ends when the spawn has no '&'."""
    libwrap = wrap(tmp_path, deny=f"ALL : ALL : spawn {SLEEP} 0.3\n".encode())
    start = time.monotonic()
    libwrap.allowed(DAEMON, CLIENT)
    assert time.monotonic() - start >= 0.3


@pytest.mark.system
def test_libwrap_does_not_wait_for_a_spawn_with_ampersand(tmp_path: Path) -> None:
    """With '&' hosts_ctl returns long before a 1 s command ends.

    The bound is 0.5 s: half the command's run, and a hundred times the usual
    2-3 ms of fork and exec, which leaves room for a loaded CI machine.
    """
    libwrap = wrap(tmp_path, deny=f"ALL : ALL : spawn {SLEEP} 1 &\n".encode())
    start = time.monotonic()
    libwrap.allowed(DAEMON, CLIENT)
    assert time.monotonic() - start < 0.5


def test_lint_percent_u_is_a_warning() -> None:
    """%u in a spawn command is a warning about the IDENT lookup."""
    ((_, severity, message),) = lint(f"ALL : ALL : spawn ({PRINTF} %u) &\n".encode())
    assert severity == "warning"
    assert "identd" in message


class Identd:
    """A loopback RFC 1413 server on port 113 that answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", 113))
        except OSError as exc:
            self.sock.close()
            pytest.skip(f"cannot bind the identd port 113 ({exc.strerror}; needs root)")
        self.sock.listen()
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            query = conn.recv(100)
            self.queries.append(query)
            time.sleep(self.delay)  # the slow identd under test, not a wait for readiness
            conn.sendall(query.strip() + b" : USERID : UNIX : someone\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.fixture
def identd() -> Iterator[Identd]:
    server = Identd(delay=0.3)
    yield server
    server.close()


def hosts_access_for(conn: socket.socket) -> bool:
    """libwrap's check for an accepted TCP connection (the real sshd path, not hosts_ctl)."""
    lib = ctypes.CDLL("libwrap.so.0")
    lib.request_init.restype = ctypes.c_void_p
    # struct request_info is 872 bytes on amd64 (PLATFORM.md); more room costs nothing.
    request = ctypes.create_string_buffer(4096)
    rq_file, rq_daemon = 1, 2
    lib.request_init(
        request,
        ctypes.c_int(rq_daemon),
        ctypes.c_char_p(DAEMON.encode()),
        ctypes.c_int(rq_file),
        ctypes.c_int(conn.fileno()),
        ctypes.c_int(0),
    )
    lib.sock_host(request)
    return bool(lib.hosts_access(request))


@pytest.mark.system
def test_libwrap_percent_u_waits_for_identd_even_with_ampersand(
    tmp_path: Path, identd: Identd
) -> None:
    """With %u libwrap asks the client's identd before the spawn: '&' does not hide the wait."""
    libwrap = wrap(tmp_path, deny=f"ALL : ALL : spawn ({PRINTF} %u) &\n".encode())
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()):
        conn, _ = server.accept()
        with conn:
            start = time.monotonic()
            hosts_access_for(conn)
            elapsed = time.monotonic() - start
    del libwrap  # its table paths had to stay alive until here
    assert len(identd.queries) == 1
    assert elapsed >= identd.delay


def test_lint_missing_program_is_an_error(tmp_path: Path) -> None:
    """A spawned program that does not exist is an error; one that is not executable too."""
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    for path in (tmp_path / "missing", script):
        ((_, severity, message),) = lint(f"ALL : ALL : spawn ({path}) &\n".encode())
        assert severity == "error"
        assert message.startswith(str(path))


@pytest.mark.system
def test_libwrap_runs_a_missing_program_to_status_127_and_a_non_executable_to_126(
    tmp_path: Path,
) -> None:
    """The shell libwrap starts fails with 127 (missing) and 126 (not executable), silently."""
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    for path in (tmp_path / "missing", script):
        rule = f"ALL : ALL : spawn {path}; {TOUCH} {tmp_path}/status-$?\n"
        wrap(tmp_path, deny=rule.encode()).allowed(DAEMON, CLIENT)
    assert sorted(p.name for p in tmp_path.glob("status-*")) == ["status-126", "status-127"]


def test_lint_relative_program_is_a_warning() -> None:
    """A program named without a path is a warning (the daemon's PATH decides); builtins pass."""
    assert severities(b"ALL : ALL : spawn (logger refused) &\n") == [(1, "warning")]
    assert lint(b"ALL : ALL : spawn (echo refused) &\n") == []


def test_lint_unbalanced_quote_is_an_error() -> None:
    """A command the shell cannot parse (an open quote) is an error."""
    assert severities(f"ALL : ALL : spawn ({TOUCH} 'x) &\n".encode()) == [(1, "error")]


@pytest.mark.system
def test_libwrap_spawn_with_unbalanced_quote_runs_nothing(tmp_path: Path) -> None:
    """libwrap hands the command to sh, which refuses it: the program never runs."""
    wrap(tmp_path, deny=f"ALL : ALL : spawn {TOUCH} {tmp_path}/q 'x\n".encode()).allowed(
        DAEMON, CLIENT
    )
    assert list(tmp_path.glob("q*")) == []


def test_lint_keyword_case_does_not_matter() -> None:
    """SPAWN and SpAwN are the same option as spawn: no finding."""
    assert (
        lint(f"ALL : ALL : SPAWN {TOUCH} /o/u &\nALL : ALL : SpAwN {TOUCH} /o/m &\n".encode()) == []
    )


@pytest.mark.system
def test_libwrap_option_keywords_are_case_insensitive(tmp_path: Path) -> None:
    """libwrap runs `SPAWN` and `SpAwN` like `spawn` (PLATFORM.md: strcasecmp)."""
    for keyword in ("SPAWN", "SpAwN"):
        rule = f"ALL : ALL : {keyword} {TOUCH} {tmp_path}/{keyword}\n"
        wrap(tmp_path, deny=rule.encode()).allowed(DAEMON, CLIENT)
    assert sorted(p.name for p in tmp_path.glob("S*")) == ["SPAWN", "SpAwN"]


def test_lint_misplaced_or_malformed_options_are_errors() -> None:
    """allow before another option, a value after allow, spawn without a command: errors."""
    for options in ("allow : spawn /bin/true &", "allow x", "spawn", "frobnicate", "spawn x &:"):
        assert "error" in [s for _, s in severities(f"ALL : ALL : {options}\n".encode())], options


@pytest.mark.system
def test_libwrap_misplaced_or_malformed_options_deny_in_allow(tmp_path: Path) -> None:
    """Each of those option errors turns a hosts.allow match into a denial."""
    for i, options in enumerate(("allow : spawn /bin/true", "allow x", "spawn", "frobnicate")):
        rule = f"{DAEMON}: {CLIENT} : {options}\n".encode()
        assert not allowed(tmp_path / str(i), allow=rule, deny=DENY_ALL), options


# --- comments and separators -----------------------------------------------------------

SWALLOWED = f"# old rule, kept for reference \\\n{DAEMON}: {CLIENT}\n".encode()


def test_lint_comment_ending_in_backslash_is_a_warning() -> None:
    """A comment ending in '\\' is a warning: it swallows the next line."""
    assert severities(SWALLOWED) == [(1, "warning")]


@pytest.mark.system
def test_libwrap_comment_ending_in_backslash_swallows_the_next_rule(tmp_path: Path) -> None:
    """libwrap joins the rule after a backslash-ended comment into it: the rule never applies."""
    assert allowed(tmp_path, deny=SWALLOWED)


INDENTED = f"  # {DAEMON}: {CLIENT}\n".encode()


def test_lint_indented_hash_is_a_warning() -> None:
    """A '#' after leading blanks is a warning: it is not a comment."""
    assert severities(INDENTED) == [(1, "warning")]


@pytest.mark.system
def test_libwrap_reads_an_indented_hash_line_as_a_rule(tmp_path: Path) -> None:
    """libwrap applies `  # sshd: CLIENT` as a rule: the client is denied."""
    assert not allowed(tmp_path, deny=INDENTED)


NO_SEPARATOR = f"{DAEMON} {CLIENT}\n".encode()


def test_lint_missing_separator_is_an_error() -> None:
    """A rule without ':' between daemons and clients is an error."""
    assert severities(NO_SEPARATOR) == [(1, "error")]


@pytest.mark.system
def test_libwrap_ignores_a_rule_without_separator(tmp_path: Path) -> None:
    """libwrap skips a rule without ':': the client it names is allowed."""
    assert allowed(tmp_path, deny=NO_SEPARATOR)


@pytest.mark.system
def test_libwrap_treats_missing_tables_as_empty(tmp_path: Path) -> None:
    """libwrap allows everyone when neither table exists, and check-hosts finds nothing."""
    require(libwrap_available(), NO_LIBWRAP)
    missing = tmp_path / "none"
    assert LibWrap(missing / "allow", missing / "deny").allowed(DAEMON, CLIENT)
    assert checkhosts.check_files(missing / "allow", missing / "deny", None) == []


# --- the wrapalert line -------------------------------------------------------------


def installation(cfg: config.Config) -> checkhosts.Installation:
    """What `wrapalert check-hosts -c` compares with, for `cfg`."""

    def line(daemons: str, ident: bool, form: hostsdeny.Form) -> str:  # noqa: FBT001 - the callback's shape
        return hosts_deny_line(cfg, PYTHON, daemons=daemons, ident=ident, form=form)

    return checkhosts.Installation(
        client=Path(notify.__file__).resolve(),
        socket=cfg.daemon.socket,
        spool=cfg.daemon.spool_dir,
        line=line,
    )


def wrapalert_findings(line: str, cfg: config.Config) -> list[checkhosts.Finding]:
    return checkhosts.lint(line.encode() + b"\n", "t", "deny", installation(cfg))


def test_lint_this_installations_line_is_clean(sockdir: Path) -> None:
    """The line `hosts-deny-line` prints for a config has no finding against that config."""
    cfg = make_config(sockdir)
    assert wrapalert_findings(hosts_deny_line(cfg, PYTHON, daemons="sshd"), cfg) == []


def test_lint_line_for_another_socket_is_an_error_with_the_right_line_as_fix(
    sockdir: Path,
) -> None:
    """A wrapalert line whose socket is not the config's is an error; the fix is the right line."""
    ours, theirs = make_config(sockdir / "ours"), make_config(sockdir / "theirs")
    found = wrapalert_findings(hosts_deny_line(theirs, PYTHON), ours)
    (wrong,) = [f for f in found if f"socket is {theirs.daemon.socket}" in f.message]
    assert wrong.severity == "error"
    assert wrong.fix == f"replace the line with: {hosts_deny_line(ours, PYTHON)}"


def test_lint_line_for_another_spool_is_an_error(sockdir: Path) -> None:
    """A wrapalert line whose spool is not the config's is an error."""
    ours = make_config(sockdir)
    line = hosts_deny_line(ours, PYTHON).replace(str(sockdir / "spool"), "/var/tmp/elsewhere")
    (finding,) = wrapalert_findings(line, ours)
    assert (finding.severity, "spool is /var/tmp/elsewhere" in finding.message) == ("error", True)


def test_lint_line_with_missing_client_is_an_error(sockdir: Path, tmp_path: Path) -> None:
    """A wrapalert line naming a client file that does not exist is an error."""
    cfg = make_config(sockdir)
    gone = tmp_path / "wrapalert" / "notify.py"
    line = hosts_deny_line(cfg, PYTHON).replace(str(Path(notify.__file__).resolve()), str(gone))
    (finding,) = wrapalert_findings(line, cfg)
    assert (finding.severity, finding.message) == (
        "error",
        f"wrapalert client {gone} does not exist",
    )


def test_lint_line_running_another_client_copy_is_a_warning(sockdir: Path, tmp_path: Path) -> None:
    """A wrapalert line running another existing copy of the client is a warning."""
    cfg = make_config(sockdir)
    copy = tmp_path / "wrapalert" / "notify.py"
    copy.parent.mkdir()
    shutil.copy(notify.__file__, copy)
    line = hosts_deny_line(cfg, PYTHON).replace(str(Path(notify.__file__).resolve()), str(copy))
    (finding,) = wrapalert_findings(line, cfg)
    assert finding.severity == "warning"


def test_lint_line_without_daemon_field_is_an_error(sockdir: Path) -> None:
    """A wrapalert line without d=%d is an error: the daemon rejects such events."""
    cfg = make_config(sockdir)
    (finding,) = wrapalert_findings(hosts_deny_line(cfg, PYTHON).replace(" d=%d", ""), cfg)
    assert (finding.severity, finding.message.startswith("no d=%d")) == ("error", True)


@pytest.mark.system
def test_libwrap_delivers_to_the_socket_in_the_line_not_the_config(
    sockdir: Path, tmp_path: Path
) -> None:
    """libwrap's spawn sends to the socket written in the line: the configured one gets nothing."""
    require(libwrap_available(), NO_LIBWRAP)
    ours, theirs = make_config(sockdir / "ours"), make_config(sockdir / "theirs")
    for cfg in (ours, theirs):
        cfg.daemon.socket.parent.mkdir()
    line = hosts_deny_line(theirs, PYTHON)
    with receiver(ours.daemon.socket) as our_sock, receiver(theirs.daemon.socket) as their_sock:
        their_sock.settimeout(10)
        wrap(tmp_path, deny=line.encode() + b"\n").allowed(DAEMON, CLIENT)
        assert b"\na=192.0.2.5\n" in their_sock.recv(8192)
        our_sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            our_sock.recv(8192)


@pytest.mark.parametrize("form", ["durable", "client", "logger"])
@pytest.mark.parametrize("ident", [False, True])
def test_lint_each_form_of_the_line_is_clean(
    form: hostsdeny.Form,
    ident: bool,  # noqa: FBT001 - a parameter
    sockdir: Path,
) -> None:
    """Each form hosts-deny-line prints (default, --client, --logger) has no finding."""
    cfg = make_config(sockdir)
    line = hosts_deny_line(cfg, PYTHON, daemons="sshd", ident=ident, form=form)
    assert [f.message for f in wrapalert_findings(line, cfg) if "%u" not in f.message] == []


def test_lint_a_line_for_another_python_is_not_outdated(sockdir: Path) -> None:
    """A line printed with --python for another interpreter is current, not outdated."""
    cfg = make_config(sockdir)
    line = hosts_deny_line(cfg, "/usr/bin/python3.11", form="durable")
    assert wrapalert_findings(line, cfg) == []


# The --logger line wrapalert printed before the durable line existed.
OLD_LOGGER_LINE = (
    "sshd : ALL : spawn (/usr/bin/logger -d -u {sock} -t wrapalert -p authpriv.notice "
    "-- WA1 d=%d p=%p c=%c a=%a n=%n s=%s) &"
)


def test_lint_the_old_logger_line_is_outdated(sockdir: Path) -> None:
    """The old unbounded logger line is a warning naming the command for the current one."""
    cfg = make_config(sockdir)
    (finding,) = wrapalert_findings(OLD_LOGGER_LINE.format(sock=cfg.daemon.socket), cfg)
    assert finding.severity == "warning"
    assert finding.message.startswith("outdated wrapalert line: its logger runs without timeout")
    assert (
        finding.fix
        == "print the current one with: wrapalert hosts-deny-line --daemons sshd --logger"
    )


def test_lint_a_line_that_cannot_ban_or_counts_twice_is_outdated(sockdir: Path) -> None:
    """A line whose events do not name the connection (no A=%A r=%r R=%R: the daemon
    cannot find it in the kernel's table, so nothing it reports bans) is outdated, and so
    is a durable line whose halves lack i=$$ (a killed logger's copy counts twice)."""
    cfg = make_config(sockdir)
    line = hosts_deny_line(cfg, PYTHON, daemons="sshd", form="durable")
    (finding,) = wrapalert_findings(line.replace(" A=%A r=%r R=%R", ""), cfg)
    assert "do not name the connection (A=%A r=%r R=%R)" in finding.message
    assert finding.fix == "print the current one with: wrapalert hosts-deny-line --daemons sshd"
    (finding,) = wrapalert_findings(line.replace(" i=$$", ""), cfg)
    assert "its halves carry no i=$$" in finding.message
    logger = hosts_deny_line(cfg, PYTHON, daemons="sshd", form="logger")
    (finding,) = wrapalert_findings(logger.replace(" r=%r R=%R", ""), cfg)
    assert finding.fix.endswith("--daemons sshd --logger")


def test_lint_a_fallback_that_can_never_run_is_outdated(sockdir: Path) -> None:
    """A durable line whose logger lacks --socket-errors=on (so it never fails) is outdated."""
    cfg = make_config(sockdir)
    line = hosts_deny_line(cfg, PYTHON, ident=True, form="durable")
    found = wrapalert_findings(line.replace(" --socket-errors=on", ""), cfg)
    (finding,) = [f for f in found if "%u" not in f.message]  # --ident's own warning aside
    assert "without --socket-errors=on" in finding.message
    assert finding.fix == "print the current one with: wrapalert hosts-deny-line --ident"


def test_lint_a_durable_line_whose_logger_socket_differs_is_an_error(sockdir: Path) -> None:
    """logger's -u socket is checked like the client's: another socket is an error."""
    ours, theirs = make_config(sockdir / "ours"), make_config(sockdir / "theirs")
    line = hosts_deny_line(ours, PYTHON, form="durable").replace(
        f"-u {ours.daemon.socket}", f"-u {theirs.daemon.socket}"
    )
    (finding,) = wrapalert_findings(line, ours)
    assert finding.severity == "error"
    assert finding.message.startswith(f"the logger's socket is {theirs.daemon.socket}")


# --- the command --------------------------------------------------------------------


def check_hosts(*args: str) -> subprocess.CompletedProcess[str]:
    """The command, outside any SSH session (an empty SSH_CONNECTION says so): the lock-out
    check then asks only that hosts.allow lets some client reach sshd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    return subprocess.run(
        [WRAPALERT, "check-hosts", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**env, "SSH_CONNECTION": ""},
    )


# A hosts.allow that lets the admins' network reach sshd: without one, a hosts.deny line
# for ALL daemons locks everyone out of ssh, and check-hosts says so (tests/test_hook_install.py).
ADMINS = b"sshd : 192.0.2.0/255.255.255.0\n"


def tables(tmp_path: Path, allow: bytes, deny: bytes) -> list[str]:
    (tmp_path / "hosts.allow").write_bytes(allow)
    (tmp_path / "hosts.deny").write_bytes(deny)
    return ["--allow", str(tmp_path / "hosts.allow"), "--deny", str(tmp_path / "hosts.deny")]


def test_command_exits_0_for_this_installations_line(sockdir: Path, tmp_path: Path) -> None:
    """check-hosts -c FILE passes the line hosts-deny-line prints for FILE: exit 0."""
    cfg = write_config(sockdir)
    line = subprocess.run(
        [WRAPALERT, "hosts-deny-line", "-c", str(cfg)], capture_output=True, check=True
    ).stdout
    result = check_hosts("-c", str(cfg), *tables(tmp_path, ADMINS, line))
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1].endswith(": 0 error(s), 0 warning(s)")


def test_command_exits_1_and_names_file_line_severity_and_fix(tmp_path: Path) -> None:
    """An error exits 1 and prints FILE:LINE: error: ..., then the fix."""
    result = check_hosts(*tables(tmp_path, b"", b"# ok\n" + NO_NEWLINE_DENY))
    assert result.returncode == 1
    first, fix = result.stdout.splitlines()[:2]
    assert first.startswith(f"{tmp_path / 'hosts.deny'}:2: error: the file ends without a newline")
    assert fix.startswith("    fix: end the file with a newline")


def test_command_exits_0_with_warnings_only(tmp_path: Path) -> None:
    """Warnings alone (here a spawn without '&') are printed but exit 0."""
    result = check_hosts(*tables(tmp_path, ADMINS, f"ALL: ALL: spawn {SLEEP} 1\n".encode()))
    assert result.returncode == 0
    assert ":1: warning: spawn without a trailing '&'" in result.stdout


def test_command_treats_missing_files_as_empty(tmp_path: Path) -> None:
    """Tables that do not exist are empty, as libwrap reads them: exit 0."""
    gone = tmp_path / "none"
    assert check_hosts("--allow", str(gone / "a"), "--deny", str(gone / "d")).returncode == 0


def test_command_usage_error_exits_2() -> None:
    """An unknown option is a usage error: exit 2."""
    assert check_hosts("--frob").returncode == 2


def test_command_reports_an_unreadable_table(tmp_path: Path) -> None:
    """A table path that cannot be read (a directory) is an error: exit 1."""
    result = check_hosts("--allow", str(tmp_path), "--deny", str(tmp_path / "none"))
    assert result.returncode == 1
    assert f"{tmp_path}:0: error: cannot read it" in result.stdout


def test_command_compares_with_the_config_given(sockdir: Path, tmp_path: Path) -> None:
    """The same wrapalert line passes with its own -c config and fails with another."""
    (sockdir / "a").mkdir()
    (sockdir / "b").mkdir()
    a, b = write_config(sockdir / "a"), write_config(sockdir / "b")
    line = subprocess.run(
        [WRAPALERT, "hosts-deny-line", "-c", str(a)], capture_output=True, check=True
    ).stdout
    files = tables(tmp_path, ADMINS, line)
    assert check_hosts("-c", str(a), *files).returncode == 0
    assert check_hosts("-c", str(b), *files).returncode == 1


def test_command_checks_the_etc_tables_by_default() -> None:
    """Without --allow/--deny it reads /etc/hosts.allow and /etc/hosts.deny."""
    result = check_hosts()
    assert result.returncode in (0, 1)
    assert result.stdout.splitlines()[-1].startswith("/etc/hosts.allow, /etc/hosts.deny: ")


def test_lint_nul_byte_is_an_error() -> None:
    """A NUL byte hides the rest of the line (and its newline) from libwrap: an error."""
    found = lint(b"in.ftpd: 198.51.100.1\x00 # note\nsshd: ALL\n")
    assert any(sev == "error" and "NUL" in msg for _, sev, msg in found)


@pytest.mark.system
def test_libwrap_nul_byte_denies_an_unrelated_client(tmp_path: Path) -> None:
    """What the NUL error predicts: a rule for in.ftpd with a NUL denies sshd to anyone."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    clean = wrap(tmp_path / "a", deny=b"in.ftpd: 198.51.100.1 # note\n")
    assert clean.allowed("sshd", "192.0.2.5")
    broken = wrap(tmp_path / "b", deny=b"in.ftpd: 198.51.100.1\x00 # note\n")
    assert not broken.allowed("sshd", "192.0.2.5")


@pytest.mark.parametrize(
    "command",
    [
        "/bin/sleep 1; /bin/true &",
        "/bin/sh -c '/bin/sleep 1' \\&",
        "/bin/sleep 1 #&",
        "/bin/sleep 1 && /bin/true &",
    ],
)
def test_lint_spawn_whose_last_part_alone_is_backgrounded_is_a_warning(command: str) -> None:
    """A spawn that ends in '&' but runs something in the foreground first still blocks."""
    found = lint(f"ALL : ALL : spawn {command}\n".encode())
    assert any("trailing '&'" in msg for _, _, msg in found), found


@pytest.mark.parametrize("command", ["(/bin/true; /bin/true) &", "/bin/true 2>&1 &"])
def test_lint_fully_backgrounded_spawn_is_fine(command: str) -> None:
    """A subshell or a redirection before the final '&' is still wholly backgrounded."""
    found = lint(f"ALL : ALL : spawn {command}\n".encode())
    assert not any("trailing '&'" in msg for _, _, msg in found), found


def test_command_names_the_command_for_the_current_line(sockdir: Path, tmp_path: Path) -> None:
    """An outdated line is a warning (exit 0) whose fix is hosts-deny-line with the same -c."""
    cfg = write_config(sockdir)
    old = OLD_LOGGER_LINE.format(sock=sockdir / "notify.sock") + "\n"
    result = check_hosts("-c", str(cfg), *tables(tmp_path, ADMINS, old.encode()))
    assert result.returncode == 0
    assert f"fix: print the current one with: wrapalert hosts-deny-line -c {cfg} " in result.stdout


@pytest.mark.system
def test_lint_knows_debians_aclexec_option(tmp_path: Path) -> None:
    """aclexec (Debian's) is an option, not an error; its program is checked like spawn's."""
    assert lint(b"sshd: ALL : aclexec /bin/true\n", "allow") == []
    (line, severity, message) = lint(b"sshd: ALL : aclexec /nonexistent/check %a\n", "allow")[0]
    assert (line, severity) == (1, "error")
    assert message.startswith("/nonexistent/check does not exist")
    libwrap = wrap(tmp_path, allow=b"sshd: ALL : aclexec /bin/true\n", deny=DENY_ALL)
    assert libwrap.allowed(DAEMON, CLIENT)
