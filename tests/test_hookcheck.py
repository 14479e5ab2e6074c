"""hookcheck: what in hosts.allow and hosts.deny stops refusals reaching the daemon, as
problems with stable keys; and the probe a hook rule is proven with, which real libwrap
decides by that very rule (its spawn runs and the event arrives)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import PYTHON, libwrap_available, make_config, receiver, require

from wrapalert import checkhosts, config, hookcheck, hostsdeny, notify
from wrapalert.cli import hosts_deny_line
from wrapalert.libwrap import LibWrap
from wrapalert.notice import Problem
from wrapalert.wire import parse

ALLOW, DENY = "/etc/hosts.allow", "/etc/hosts.deny"


def installation(cfg: config.Config) -> checkhosts.Installation:
    return checkhosts.Installation.of(
        hostsdeny.Install.here(PYTHON, cfg.daemon.socket, cfg.daemon.spool_dir)
    )


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return make_config(tmp_path)


@pytest.fixture
def line(cfg: config.Config) -> bytes:
    """This installation's default hosts.deny line, with its newline."""
    return hosts_deny_line(cfg, PYTHON, form="durable").encode() + b"\n"


def problems(
    cfg: config.Config, allow: bytes | None, deny: bytes | None, reporters: tuple[str, ...] = ()
) -> list[Problem]:
    tables = hookcheck.Tables(allow, deny, ALLOW, DENY)
    return hookcheck.problems(tables, installation(cfg), reporters)


@pytest.mark.parametrize("form", ["durable", "client", "logger"])
def test_the_installed_line_in_any_form_has_no_problem(cfg: config.Config, form: str) -> None:
    """The line `hosts-deny-line` prints, under a comment and an admin's allow rule."""
    deny = b"# hosts.deny\n" + hosts_deny_line(cfg, PYTHON, form=form).encode() + b"\n"  # type: ignore[arg-type]
    assert problems(cfg, b"sshd : 192.0.2.0/255.255.255.0\n", deny) == []


@pytest.mark.parametrize("deny", [None, b"", b"# ALL : ALL : spawn wrapalert\nALL : PARANOID\n"])
def test_no_rule_running_the_hook_is_one_problem_naming_the_file(
    cfg: config.Config, deny: bytes | None
) -> None:
    """A missing or empty hosts.deny, or one whose hook is commented out."""
    (problem,) = problems(cfg, None, deny)
    assert (problem.kind, problem.key, problem.path) == ("no_hook", f"no_hook:{DENY}", DENY)
    assert "no rule of /etc/hosts.deny runs wrapalert's hook" in problem.message
    assert "--install" in problem.fix


def test_the_hook_line_without_its_final_newline_is_a_problem_of_that_line(
    cfg: config.Config, line: bytes
) -> None:
    """libwrap then refuses without running it (test_check_hosts proves that part)."""
    (problem,) = problems(cfg, b"", b"ALL : PARANOID\n" + line.rstrip(b"\n"))
    assert (problem.kind, problem.line) == ("hook_line", 2)
    assert problem.message.startswith("the file ends without a newline")
    assert problem.fix.startswith("end the file with a newline")


def test_a_hook_line_naming_another_socket_is_a_problem(cfg: config.Config, tmp_path: Path) -> None:
    """The line of another configuration: its events go to a socket nobody reads."""
    other = make_config(tmp_path / "other")
    deny = hosts_deny_line(other, PYTHON, form="durable").encode() + b"\n"
    found = problems(cfg, b"", deny)
    assert {p.kind for p in found} == {"hook_line"}
    assert any(f"socket is {other.daemon.socket}" in p.message for p in found)


def test_a_broken_hook_line_is_a_problem(cfg: config.Config, line: bytes) -> None:
    """An unescaped ':' inside the command: libwrap rejects the option and denies."""
    broken = line.replace(b"-t wrapalert", b"-t wrap:alert", 1)
    (problem,) = problems(cfg, b"", broken)
    assert problem.kind == "hook_line"
    assert "unescaped ':'" in problem.message


def test_an_outdated_hook_line_is_a_problem(cfg: config.Config, line: bytes) -> None:
    """A line from before A=%A r=%r R=%R: the linter's "outdated" is the alarm's too."""
    old = line.replace(b" A=%A r=%r R=%R", b"")
    (problem,) = problems(cfg, b"", old)
    assert problem.kind == "outdated"
    assert problem.message.startswith("outdated wrapalert line")


def test_a_hook_line_warning_that_leaves_it_running_is_no_problem(
    cfg: config.Config, line: bytes, tmp_path: Path
) -> None:
    """Another copy of the client (a warning of check-hosts): the hook still reports."""
    copy = tmp_path / "wrapalert" / "notify.py"
    copy.parent.mkdir()
    copy.write_bytes(Path(notify.__file__).read_bytes())
    other = line.replace(str(Path(notify.__file__).resolve()).encode(), str(copy).encode())
    found = checkhosts.lint(other, DENY, "deny", installation(cfg))
    assert [f.severity for f in found] == ["warning"]
    assert problems(cfg, b"", other) == []


def test_a_second_hook_line_behind_the_first_is_no_problem(cfg: config.Config, line: bytes) -> None:
    """The first hook line decides and reports: the second never runs, and need not."""
    client = hosts_deny_line(cfg, PYTHON, form="client").encode() + b"\n"
    assert problems(cfg, b"", line + client) == []


@pytest.mark.parametrize(
    ("allow", "deny_before", "path", "line_no"),
    [
        (b"ALL : ALL\n", b"", ALLOW, 1),
        (b"# admins\nsshd : ALL\n", b"", ALLOW, 2),
        (b"", b"sshd : ALL\n", DENY, 1),
        (b"sshd : 0.0.0.0/0.0.0.0\n", b"", ALLOW, 1),  # every IPv4 client: IPv6 still reports
    ],
)
def test_a_rule_that_decides_first_for_every_probe_of_a_family_shadows_the_hook(
    cfg: config.Config, line: bytes, *, allow: bytes, deny_before: bytes, path: str, line_no: int
) -> None:
    """hosts.allow allows (or an earlier hosts.deny rule refuses) every documentation
    address of a family before libwrap reads the hook: it never runs for them."""
    (problem,) = problems(cfg, allow, deny_before + line)
    assert (problem.kind, problem.path, problem.line) == ("shadowed", path, line_no)
    assert "sshd connections from clients such as" in problem.message


def test_an_admin_network_in_hosts_allow_shadows_nothing(cfg: config.Config, line: bytes) -> None:
    """The README's own example network: the other documentation addresses still reach
    the hook (a family is shadowed only when none of its probes does)."""
    allow = b"sshd : 192.0.2.0/255.255.255.0\nsshd : [2001:db8::]/32\n"
    assert problems(cfg, allow, line) == []


def test_a_shadowing_rules_key_survives_edits_to_other_lines(
    cfg: config.Config, line: bytes
) -> None:
    """The key names the rule, not its line: comments added above change the line number
    and the message, never the key (so no second notice)."""
    (before,) = problems(cfg, b"sshd : ALL\n", line)
    (after,) = problems(cfg, b"# one\n# two\nsshd : ALL\n", b"# new comment\n" + line)
    assert after.key == before.key
    assert (before.line, after.line) == (1, 3)


def test_a_broken_line_before_the_hook_is_a_problem_of_the_table(
    cfg: config.Config, line: bytes
) -> None:
    """A line of 2048 bytes ends hosts.deny: every client is refused there, unreported."""
    long = b"in.fingerd : " + b"a" * 2100 + b"\n"
    found = problems(cfg, b"", long + line)
    assert [(p.kind, p.line) for p in found] == [("broken_table", 1)]
    assert "libwrap stops reading there" in found[0].message


def test_a_service_allowed_for_all_is_found_when_the_rule_names_it_or_it_reported(
    cfg: config.Config, line: bytes
) -> None:
    """hosts.allow `vsftpd : ALL` shadows a hook for every daemon only for vsftpd: found
    when vsftpd reported lately (or the hook rule names it), not otherwise."""
    allow = b"vsftpd : ALL\n"
    assert problems(cfg, allow, line) == []
    (problem,) = problems(cfg, allow, line, reporters=("vsftpd",))
    assert "vsftpd connections" in problem.message
    named = line.replace(b"ALL : ALL", b"sshd,vsftpd : ALL", 1)
    assert [p.kind for p in problems(cfg, allow, named)] == ["shadowed"]


@pytest.mark.parametrize(
    ("token", "address"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("10.1.", "10.1.0.1"),
        ("10.", "10.0.0.1"),
        ("198.51.100.0/255.255.255.0", "198.51.100.1"),
        ("198.51.100.0/24", "198.51.100.1"),
        ("198.51.100.9/255.255.255.255", "198.51.100.9"),
        ("[2001:db8:5::]/48", "2001:db8:5::1"),
        ("[2001:DB8::7]", "2001:db8::7"),
        ("2001:db8::7", None),  # libwrap matches IPv6 only in brackets
        ("ALL", None),
        (".example.com", None),
        ("host.example.com", None),
    ],
)
def test_an_address_in_each_kind_of_pattern(token: str, address: str | None) -> None:
    assert hookcheck.address_in(token) == address


def test_a_rule_naming_clients_is_probed_with_one_of_them_not_after_except() -> None:
    rule = hookcheck.HookRule("deny", 1, "sshd : 10.1. EXCEPT 10.1.2.3 : spawn x &")
    assert hookcheck.clients(rule)[0] == "10.1.0.1"
    assert "10.1.2.3" not in hookcheck.clients(rule)


# -- the probe, as real libwrap decides it ---------------------------------------------------


def _wrapped(tmp_path: Path, allow: bytes, deny: bytes) -> tuple[LibWrap, hookcheck.Tables]:
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    (tmp_path / "hosts.allow").write_bytes(allow)
    (tmp_path / "hosts.deny").write_bytes(deny)
    tables = hookcheck.Tables(allow, deny, str(tmp_path / "hosts.allow"), DENY)
    return LibWrap(tmp_path / "hosts.allow", tmp_path / "hosts.deny"), tables


def _arrived(sock: socket.socket) -> list[dict[str, str]]:
    sock.settimeout(3)
    out = []
    try:
        while True:
            out.append(parse(sock.recv(4096)))
            sock.settimeout(0.3)
    except TimeoutError:
        return out


@pytest.mark.system
@pytest.mark.parametrize(
    ("allow", "rule", "daemon", "client"),
    [
        (b"", b"ALL : ALL", "sshd", "192.0.2.254"),
        (b"sshd : 192.0.2.0/255.255.255.0\n", b"ALL : ALL", "sshd", "198.51.100.254"),
        (b"ALL : ALL EXCEPT 10.9.\n", b"in.fingerd : 10.9.", "in.fingerd", "10.9.0.1"),
        (b"sshd : ALL\n", b"ALL EXCEPT sshd : ALL", "wrapalert-canary", "192.0.2.254"),
    ],
)
def test_the_probe_is_decided_by_the_hook_rule_in_real_libwrap(
    tmp_path: Path, allow: bytes, rule: bytes, daemon: str, client: str
) -> None:
    """The probe hookcheck picks makes real libwrap refuse by that rule: its real spawn
    line runs and the event arrives, for that daemon and client."""
    cfg = make_config(tmp_path)
    line = hosts_deny_line(cfg, PYTHON, form="durable").replace("ALL : ALL", rule.decode(), 1)
    wrap, tables = _wrapped(tmp_path, allow, line.encode() + b"\n")
    (hook,) = hookcheck.hook_rules(tables.deny or b"", "deny")
    probe = hookcheck.probe(tables, hook)
    assert probe is not None
    assert (probe.daemon, probe.client) == (daemon, client)
    with receiver(cfg.daemon.socket) as sock:
        assert not wrap.allowed(probe.daemon, probe.client)
        (event,) = _arrived(sock)
    assert (event["daemon"], event["client_addr"]) == (daemon, client)


@pytest.mark.system
def test_a_shadowed_hook_has_no_probe_and_real_libwrap_never_runs_it(tmp_path: Path) -> None:
    """hosts.allow `ALL : ALL`: no probe, a problem, and real libwrap allows every
    documentation address without running the spawn (no event)."""
    cfg = make_config(tmp_path)
    line = hosts_deny_line(cfg, PYTHON, form="durable").encode() + b"\n"
    wrap, tables = _wrapped(tmp_path, b"ALL : ALL\n", line)
    (hook,) = hookcheck.hook_rules(line, "deny")
    assert hookcheck.probe(tables, hook) is None
    assert [p.kind for p in hookcheck.problems(tables, installation(cfg))] == ["shadowed"]
    with receiver(cfg.daemon.socket) as sock:
        for client in hookcheck.PROBES_V4 + hookcheck.PROBES_V6:
            assert wrap.allowed("sshd", client)
        assert _arrived(sock) == []
