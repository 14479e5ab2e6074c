"""`wrapalert hosts-deny-line --install | --uninstall`: the hook written safely, never locking
the admin out.

The edits are pure (wrapalert/hookinstall.py) and tested with bytes; the command
is run as a user would, on tables in tmp dirs (--allow-file, --deny-file), with
SSH_CONNECTION set as sshd sets it. The lock-out verdict is checked against the
real libwrap: for each case the command's decision (exit 2: refused) must be
what hosts_ctl says of the files it wrote (with --force where it refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PYTHON, WRAPALERT, libwrap_available, require, write_config

from wrapalert import checkhosts, config, hookinstall, lockout
from wrapalert.cli import hosts_deny_line
from wrapalert.hostsaccess import Endpoint, Request, decide

ORACLE = str(Path(__file__).with_name("libwrap_oracle.py"))
OURS = "ALL : ALL : spawn (/usr/bin/python3 -I -S /x/wrapalert/notify.py d=%d a=%a) &"
OLD = "ALL : ALL : spawn (/usr/bin/python3 -I -S /old/wrapalert/notify.py d=%d) &"
SESSION = "192.0.2.5 51234 198.51.100.1 22"


# --- the edits -------------------------------------------------------------------------


def test_install_appends_the_line_and_the_missing_final_newline() -> None:
    """A table whose last line lacks its newline gets one before our line is appended."""
    edit = hookinstall.with_hook(b"in.ftpd: 10.0.0.1", OURS)
    assert edit.data == b"in.ftpd: 10.0.0.1\n" + OURS.encode() + b"\n"
    assert edit.changes == (
        "added the missing newline at the end of the file",
        "added the wrapalert line as line 2",
    )


def test_install_replaces_an_outdated_line_where_it_stands() -> None:
    """An older wrapalert line is replaced in place, never doubled; other rules stay."""
    data = f"# top\n{OLD}\nsshd: 10.0.0.1\n".encode()
    edit = hookinstall.with_hook(data, OURS)
    assert edit.data == f"# top\n{OURS}\nsshd: 10.0.0.1\n".encode()
    assert edit.changes == ("replaced the outdated wrapalert line 2",)


def test_install_removes_a_second_wrapalert_line() -> None:
    """Two wrapalert lines become one: the first is replaced, the second removed."""
    edit = hookinstall.with_hook(f"{OLD}\nin.ftpd: ALL\n{OURS}\n".encode(), OURS)
    assert edit.data == f"{OURS}\nin.ftpd: ALL\n".encode()
    assert edit.changes == (
        "replaced the outdated wrapalert line 1",
        "removed a second wrapalert line, line 3",
    )


def test_install_of_the_same_line_changes_nothing() -> None:
    """The identical line already there: no change at all."""
    data = f"sshd: 10.0.0.1\n{OURS}\n".encode()
    assert hookinstall.with_hook(data, OURS) == hookinstall.Edit(data, ())


def test_install_keeps_continued_rules_whole() -> None:
    """A rule continued over lines (backslash-newline) stays as it was."""
    data = b"in.ftpd: 10.0.0.1, \\\n 10.0.0.2\n"
    assert hookinstall.with_hook(data, OURS).data == data + OURS.encode() + b"\n"


def test_uninstall_removes_exactly_the_wrapalert_lines() -> None:
    """Every wrapalert line goes; another spawn rule and a comment naming wrapalert stay."""
    other = "ALL : ALL : spawn (/usr/bin/logger -t other %a) &"
    data = f"# wrapalert notify.py\n{OLD}\n{other}\n{OURS}\n".encode()
    edit = hookinstall.without_hook(data)
    assert edit.data == f"# wrapalert notify.py\n{other}\n".encode()
    assert edit.changes == ("removed the wrapalert line 2", "removed the wrapalert line 4")


def test_uninstall_without_our_line_changes_nothing() -> None:
    assert hookinstall.without_hook(b"ALL: ALL\n") == hookinstall.Edit(b"ALL: ALL\n", ())


def test_allow_entries_are_added_once_under_a_comment() -> None:
    """hosts.allow entries come once, below a comment; a second run adds nothing."""
    first = hookinstall.with_allowed(b"in.ftpd: ALL", ["sshd : 192.0.2.5", "sshd : 192.0.2.5"])
    assert first.data == (b"in.ftpd: ALL\n" + hookinstall.ALLOW_COMMENT + b"sshd : 192.0.2.5\n")
    assert hookinstall.with_allowed(first.data, ["sshd : 192.0.2.5"]).changes == ()


def test_the_wrapalert_line_is_recognised_in_every_form(sockdir: Path) -> None:
    """The lines hosts-deny-line prints (each form) are ours; other spawn lines are not."""
    cfg = config.load(write_config(sockdir))
    for form in ("durable", "client", "logger"):
        assert checkhosts.runs_wrapalert(hosts_deny_line(cfg, PYTHON, form=form))
    assert not checkhosts.runs_wrapalert("ALL : ALL : spawn (/usr/bin/logger -t x %a) &")
    assert not checkhosts.runs_wrapalert("sshd : 192.0.2.5")


# --- --allow values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "pattern"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("192.0.2.0/24", "192.0.2.0/255.255.255.0"),
        ("192.0.2.7/24", "192.0.2.0/255.255.255.0"),
        ("192.0.2.0/255.255.255.0", "192.0.2.0/255.255.255.0"),
        ("192.0.2.7/32", "192.0.2.7"),
        ("0.0.0.0/0", "0.0.0.0/0.0.0.0"),
        ("2001:db8::5", "[2001:db8::5]"),
        ("[2001:db8::5]", "[2001:db8::5]"),
        ("2001:DB8::/32", "[2001:db8::]/32"),
        ("[2001:db8::]/48", "[2001:db8::]/48"),
        ("2001:db8::5/128", "[2001:db8::5]"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/255.255.255.0"),
        ("admin.example.com", "admin.example.com"),
        (".example.com", ".example.com"),
    ],
)
def test_allow_values_become_patterns_libwrap_reads(given: str, pattern: str) -> None:
    assert lockout.allow_pattern(given) == pattern


@pytest.mark.parametrize(
    "hostile",
    [
        "192.0.2.7 : spawn /bin/sh",
        "192.0.2.7:spawn",
        "192.0.2.7,ALL",
        "192.0.2.7 ALL",
        "192.0.2.7\nALL : ALL : allow",
        "192.0.2.7\\",
        "ALL",
        "except",
        "LOCAL",
        "UNKNOWN",
        "@netgroup",
        "/etc/hosts.allow",
        "-rf",
        "",
        "host_name.example",
        "*.example.com",
        "a..b",
        "192.0.2.0/33",
        "192.0.2",
        "fe80::1%eth0",
        "[192.0.2.7]",
        "[2001:db8::]x",
        "::ffff:192.0.2.0/64",
        "h\u00e9.example",
        "root@192.0.2.7",
    ],
)
def test_hostile_allow_values_are_refused(hostile: str) -> None:
    """Anything but an address, a network or a host name is refused: no second rule, no
    option, no list, no keyword can ride in on an --allow value."""
    with pytest.raises(ValueError, match=r"not an address|keyword|zone|prefix"):
        lockout.allow_pattern(hostile)


@pytest.mark.system
def test_allow_patterns_match_in_real_libwrap() -> None:
    """Each converted pattern lets in the clients of its network and no other (hosts_ctl)."""
    cases = [
        ("192.0.2.0/24", "192.0.2.200", "192.0.3.1"),
        ("192.0.2.7/32", "192.0.2.7", "192.0.2.8"),
        ("192.0.2.0/25", "::ffff:192.0.2.100", "192.0.2.130"),
        ("2001:db8::/32", "2001:db8:1::5", "2001:db9::5"),
        ("2001:db8::5", "2001:db8::5", "2001:db8::6"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
    ]
    batch = []
    for given, inside, outside in cases:
        allow = lockout.allow_line(lockout.allow_pattern(given)) + "\n"
        batch += [_case(allow, "ALL: ALL\n", inside), _case(allow, "ALL: ALL\n", outside)]
    assert libwrap(batch) == [True, False] * len(cases)


# --- the lock-out check ----------------------------------------------------------------------


def tables(allow: str, deny: str = OURS + "\n") -> lockout.Tables:
    return lockout.Tables(allow.encode(), deny.encode(), "hosts.allow", "hosts.deny")


def session(client: str = "192.0.2.5") -> lockout.Session:
    return lockout.Session(client, None, "SSH_CONNECTION")


def test_lockout_of_the_session_client_names_the_line_to_add() -> None:
    """Refusing the session's client is an error naming the deny line and the allow line."""
    (found,) = lockout.findings(tables(""), session(), command="wrapalert hosts-deny-line")
    assert (found.path, found.line, found.severity) == ("hosts.deny", 1, "error")
    assert "refuse ssh to your own session's client 192.0.2.5" in found.message
    assert "add 'sshd : 192.0.2.5' to hosts.allow" in found.fix
    assert "wrapalert hosts-deny-line --install --allow 192.0.2.5" in found.fix


def test_lockout_by_a_deny_option_in_hosts_allow_says_above_which_line() -> None:
    """A hosts.allow rule that refuses the client: the fix goes above that line."""
    (found,) = lockout.findings(
        tables("# x\nsshd: ALL EXCEPT 10.0.0.0/8 : deny\n"), session(), command="w"
    )
    assert (found.path, found.line) == ("hosts.allow", 2)
    assert found.fix == "add 'sshd : 192.0.2.5' to hosts.allow above line 2"


def test_lockout_behind_a_broken_hosts_allow_line_says_to_repair_it() -> None:
    """A rule for the client below a line libwrap stops at does not count: repair first."""
    (found,) = lockout.findings(tables("#" * 2100 + "\nsshd: 192.0.2.5\n"), session(), command="w")
    assert "hosts.allow stops at line 1" in found.message
    assert found.fix.startswith("repair hosts.allow line 1 first")


def test_host_name_rules_do_not_keep_the_session_in() -> None:
    """A host name in hosts.allow needs DNS at login: it does not count, and it is said."""
    (found,) = lockout.findings(tables("sshd: .example.com\n"), session(), command="w")
    assert "need DNS" in found.message


def test_ipv4_session_is_checked_as_a_dual_stack_sshd_reports_it_too() -> None:
    """An IPv4 client is checked also as ::ffff:a.b.c.d; a [::ffff:...] rule lets in neither."""
    found = lockout.findings(tables("sshd: [::ffff:192.0.2.5]\n"), session(), command="w")
    assert len(found) == 1


def test_no_session_and_no_sshd_client_in_hosts_allow_is_an_error() -> None:
    """Without an SSH session: hosts.allow must let some client reach sshd."""
    (found,) = lockout.findings(tables("vsftpd: 192.0.2.0/24\n"), None, command="w")
    assert "nobody could log in by ssh" in found.message
    assert lockout.findings(tables("sshd: 192.0.2.0/24\n"), None, command="w") == []


def test_no_risk_when_hosts_deny_leaves_sshd_alone() -> None:
    """A line for other daemons refuses no ssh client: nothing to report."""
    deny = OURS.replace("ALL : ALL", "vsftpd : ALL") + "\n"
    assert lockout.findings(tables("", deny), session(), command="w") == []
    assert lockout.findings(tables("", deny), None, command="w") == []


def test_session_is_read_from_the_nearest_ancestor_when_sudo_cleared_it(tmp_path: Path) -> None:
    """No SSH_CONNECTION here (sudo's env_reset): the ancestor that has it names the client."""
    proc = tmp_path / "proc"
    chain = (
        (30, 20, b"PATH=/bin\0"),
        (20, 10, f"SSH_CONNECTION={SESSION}\0".encode()),
        (10, 1, b""),
    )
    for pid, ppid, env in chain:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} (a) b) S {ppid} 1 1 0")
        (proc / str(pid) / "environ").write_bytes(env)
    found = lockout.ssh_session({}, proc=proc, pid=30)
    assert found == lockout.Session("192.0.2.5", "198.51.100.1", "SSH_CONNECTION of pid 20")
    assert lockout.ssh_session({"SSH_CONNECTION": ""}, proc=proc, pid=30) is None


# --- the command -----------------------------------------------------------------------------


def _case(allow: str, deny: str, addr: str) -> dict[str, str]:
    return {
        "allow": allow,
        "deny": deny,
        "daemon": "sshd",
        "addr": addr,
        "name": "unknown",
        "user": "unknown",
    }


def libwrap(cases: list[dict[str, str]]) -> list[bool]:
    """Real libwrap's verdicts (tests/libwrap_oracle.py, a process of its own)."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    out = subprocess.run(
        [sys.executable, ORACLE],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    verdicts: list[bool] = json.loads(out.stdout)
    return verdicts


def _text(path: Path) -> str:
    """A table as the oracle takes it ("" when the file does not exist: libwrap's empty)."""
    return path.read_bytes().decode("latin-1") if path.exists() else ""


def install(
    base: Path, *args: str, ssh: str | None = SESSION, cfg: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """hosts-deny-line --install (or other args) on base/hosts.allow and base/hosts.deny."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["SSH_CONNECTION"] = ssh or ""  # empty: no session (the ancestors are not asked)
    files = ["--allow-file", str(base / "hosts.allow"), "--deny-file", str(base / "hosts.deny")]
    config = ["-c", str(cfg)] if cfg else []
    return subprocess.run(
        [WRAPALERT, "hosts-deny-line", *config, "--python", PYTHON, *files, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_refuses_to_lock_out_the_session_and_writes_nothing(tmp_path: Path) -> None:
    """Empty hosts.allow, session from 192.0.2.5: exit 2, both files untouched, the fix named."""
    (tmp_path / "hosts.deny").write_text("in.ftpd: ALL\n")
    result = install(tmp_path, "--install")
    assert result.returncode == 2
    assert "add 'sshd : 192.0.2.5' to" in result.stderr
    assert "nothing written" in result.stderr
    assert (tmp_path / "hosts.deny").read_text() == "in.ftpd: ALL\n"
    assert not (tmp_path / "hosts.allow").exists()
    assert not list(tmp_path.glob("*wrapalert*"))


def test_allow_writes_the_entries_and_the_line_in_one_step(tmp_path: Path) -> None:
    """--allow adds the hosts.allow entries and the hosts.deny line; a rerun changes nothing."""
    (tmp_path / "hosts.deny").write_text("in.ftpd: ALL\n")
    result = install(tmp_path, "--install", "--allow", "192.0.2.0/24", "2001:db8::/32")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hosts.allow").read_text().splitlines()[1:] == [
        "sshd : 192.0.2.0/255.255.255.0",
        "sshd : [2001:db8::]/32",
    ]
    deny = (tmp_path / "hosts.deny").read_text()
    assert deny.startswith("in.ftpd: ALL\nALL : ALL : spawn (")
    assert (tmp_path / "hosts.deny.wrapalert-bak").read_text() == "in.ftpd: ALL\n"
    assert "stays allowed" in result.stdout
    again = install(tmp_path, "--install", "--allow", "192.0.2.0/24")
    assert again.returncode == 0
    assert "already there" in again.stdout
    assert (tmp_path / "hosts.deny").read_text() == deny


def test_force_writes_a_lock_out_and_says_so(tmp_path: Path) -> None:
    result = install(tmp_path, "--install", "--force")
    assert result.returncode == 0
    assert "written anyway (--force)" in result.stderr
    assert "spawn" in (tmp_path / "hosts.deny").read_text()


def test_no_session_needs_some_sshd_client_in_hosts_allow(tmp_path: Path) -> None:
    """From a console (no SSH session): refused until hosts.allow names a client for sshd."""
    refused = install(tmp_path, "--install", ssh=None)
    assert refused.returncode == 2
    assert "nobody could log in by ssh" in refused.stderr
    written = install(tmp_path, "--install", "--allow", "10.0.0.0/8", ssh=None)
    assert written.returncode == 0, written.stderr


def test_session_of_a_parent_process_counts(tmp_path: Path) -> None:
    """Run through a shell whose environment has SSH_CONNECTION and a child without it (as
    sudo leaves it): the child still finds the session and refuses to lock it out."""
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    files = ["--allow-file", str(allow), "--deny-file", str(deny)]
    command = " ".join([WRAPALERT, "hosts-deny-line", "--install", *files])
    env = {"PATH": os.environ["PATH"], "SSH_CONNECTION": SESSION}
    result = subprocess.run(
        ["/bin/sh", "-c", f"env -u SSH_CONNECTION {command}; exit $?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "192.0.2.5 (SSH_CONNECTION of pid" in result.stderr


def test_install_keeps_owner_and_mode_and_a_symlinked_table(tmp_path: Path) -> None:
    """The table keeps its owner and mode; a symlink stays a symlink to the edited file."""
    real = tmp_path / "real.deny"
    real.write_text("in.ftpd: ALL\n")
    real.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(real, 1234, 5678)
    (tmp_path / "hosts.deny").symlink_to(real)
    result = install(tmp_path, "--install", "--allow", "192.0.2.5")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hosts.deny").is_symlink()
    st = real.stat()
    assert st.st_mode & 0o7777 == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert "spawn" in real.read_text()
    assert (tmp_path / "real.deny.wrapalert-bak").read_text() == "in.ftpd: ALL\n"


def test_uninstall_removes_the_line_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "hosts.deny").write_text(f"in.ftpd: ALL\n{OLD}\n")
    (tmp_path / "hosts.allow").write_text("sshd: 10.0.0.1\n")
    result = install(tmp_path, "--uninstall")
    assert result.returncode == 0
    assert (tmp_path / "hosts.deny").read_text() == "in.ftpd: ALL\n"
    assert (tmp_path / "hosts.allow").read_text() == "sshd: 10.0.0.1\n"
    assert "removed the wrapalert line 2" in result.stdout
    again = install(tmp_path, "--uninstall")
    assert again.returncode == 0
    assert "nothing to remove" in again.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--allow", "192.0.2.5"],
        ["--force"],
        ["--install", "--uninstall"],
        ["--install", "--allow", "192.0.2.5 : spawn /bin/sh"],
    ],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path, args: list[str]) -> None:
    assert install(tmp_path, *args).returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_rule_that_hides_the_hook_is_pointed_out(tmp_path: Path) -> None:
    """A plain `ALL: ALL` above our line refuses first: the hook would never run. Said."""
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    result = install(tmp_path, "--install", "--allow", "192.0.2.5")
    assert result.returncode == 0
    assert "line 1 (ALL: ALL) refuses sshd first: the hook never runs" in result.stderr


LOCKOUT_CASES = [
    # (hosts.allow before, session client, extra args)
    ("", "192.0.2.5", []),
    ("sshd: 192.0.2.5\n", "192.0.2.5", []),
    ("sshd: 192.0.2.0/255.255.255.0\n", "192.0.2.5", []),
    ("sshd: 192.0.2.0/24\n", "192.0.2.77", []),
    ("sshd: 10.0.0.0/8\n", "192.0.2.5", []),
    ("ALL: ALL\n", "192.0.2.5", []),
    ("sshd: ALL EXCEPT 192.0.2.5\n", "192.0.2.5", []),
    ("sshd: ALL EXCEPT 192.0.2.6\n", "192.0.2.5", []),
    ("vsftpd, in.ftpd: 192.0.2.5\n", "192.0.2.5", []),
    ("sshd: 192.0.2.5 : deny\n", "192.0.2.5", []),
    ("sshd: 192.0.2.5 : severity bogus\n", "192.0.2.5", []),
    ("sshd: .example.com\n", "192.0.2.5", []),
    ("sshd: KNOWN\n", "192.0.2.5", []),
    ("sshd: UNKNOWN\n", "192.0.2.5", []),
    ("sshd: 192.0.2.5", "192.0.2.5", []),  # no final newline: the install adds it
    ("#" * 2100 + "\nsshd: 192.0.2.5\n", "192.0.2.5", []),
    ("sshd: [2001:db8::]/32\n", "2001:db8::5", []),
    ("sshd: [2001:db8::]/32\n", "2001:db9::5", []),
    ("", "192.0.2.5", ["--allow", "192.0.2.0/24"]),
    ("", "2001:db8::5", ["--allow", "2001:db8::/48"]),
    ("sshd: 192.0.2.5 : deny\n", "192.0.2.5", ["--allow", "192.0.2.5"]),
    ("", "192.0.2.5", ["--daemons", "vsftpd"]),
    ("", "192.0.2.5", ["--daemons", "sshd,vsftpd"]),
]


@pytest.mark.system
def test_the_lockout_verdict_is_real_libwraps_on_the_written_files(sockdir: Path) -> None:
    """For each case, --install refuses (exit 2) exactly when real libwrap, reading the files
    written (with --force where it refused), refuses the session's client for sshd."""
    cfg = write_config(sockdir)  # the hook spools under sockdir when hosts_ctl runs it
    batch, refused = [], []
    for index, (allow, client, extra) in enumerate(LOCKOUT_CASES):
        base = sockdir / f"case{index}"
        base.mkdir()
        if allow:
            (base / "hosts.allow").write_bytes(allow.encode())
        ssh = f"{client} 40000 198.51.100.1 22"
        result = install(base, "--install", *extra, ssh=ssh, cfg=cfg)
        assert result.returncode in (0, 2), result.stderr
        refused.append(result.returncode == 2)
        if result.returncode == 2:
            assert install(base, "--install", "--force", *extra, ssh=ssh, cfg=cfg).returncode == 0
        files = [_text(base / name) for name in ("hosts.allow", "hosts.deny")]
        batch.append(_case(files[0], files[1], client))
    real = libwrap(batch)
    assert [not allowed for allowed in real] == refused
    assert any(refused)
    assert not all(refused)


def test_check_hosts_reports_the_same_lockout_as_an_error(tmp_path: Path) -> None:
    """check-hosts, from the same session, gives the same error and fix as --install."""
    (tmp_path / "hosts.allow").write_text("sshd: 10.0.0.0/8\n")
    refused = install(tmp_path, "--install")
    env = {**os.environ, "SSH_CONNECTION": SESSION}
    install(tmp_path, "--install", "--force")
    files = ["--allow", str(tmp_path / "hosts.allow"), "--deny", str(tmp_path / "hosts.deny")]
    checked = subprocess.run(
        [WRAPALERT, "check-hosts", *files],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 1
    first = refused.stderr.splitlines()[0]
    assert first in checked.stdout.splitlines()
    assert refused.stderr.splitlines()[1] in checked.stdout.splitlines()


def test_model_agrees_on_the_v4_mapped_form() -> None:
    """A rule for 192.0.2.5 lets in ::ffff:192.0.2.5 too (the model, as libwrap)."""
    d = decide(b"sshd: 192.0.2.5\n", b"ALL: ALL\n", Request("sshd", Endpoint("::ffff:192.0.2.5")))
    assert d.allowed


def test_check_hosts_reports_a_deny_line_with_an_empty_hosts_allow(sockdir: Path) -> None:
    """The first-hour trap: README's line in hosts.deny and Debian's empty hosts.allow.
    check-hosts (no SSH session) now says nobody could log in by ssh: exit 1."""
    cfg = write_config(sockdir)
    line = subprocess.run(
        [WRAPALERT, "hosts-deny-line", "-c", str(cfg)], capture_output=True, check=True, text=True
    ).stdout
    (sockdir / "hosts.allow").write_text("# empty, as Debian ships it\n")
    (sockdir / "hosts.deny").write_text(line)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    result = subprocess.run(
        [WRAPALERT, "check-hosts", "-c", str(cfg), "--allow", str(sockdir / "hosts.allow"),
         "--deny", str(sockdir / "hosts.deny")],
        capture_output=True, text=True, env={**env, "SSH_CONNECTION": ""}, check=False,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "nobody could log in by ssh" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(": 1 error(s), 0 warning(s)")


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("fe80::1%eth0 50000 fe80::2%eth0 22", "fe80::1"),
        ("2001:DB8::5 50000 2001:db8::1 22", "2001:db8::5"),
        ("not-an-address 1 2 3", None),
        ("", None),
    ],
)
def test_session_addresses_are_canonical_and_hostile_ones_ignored(
    value: str, client: str | None
) -> None:
    """A zone is dropped, case folded; anything that is no address is no session."""
    found = lockout.ssh_session({"SSH_CONNECTION": value})
    assert (found.client if found else None) == client
    if found is not None:
        assert lockout.findings(tables(""), found, command="w")  # and the check runs on it
