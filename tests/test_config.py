"""Configuration: defaults, durations, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrapalert import config
from wrapalert.confparse import ConfigError, parse_duration
from wrapalert.sinks.smtp import SmtpSinkConfig
from wrapalert.story import StoryRule


def test_missing_default_file_means_built_in_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without /etc/wrapalert/wrapalert.toml the daemon runs on DESIGN.md's defaults."""
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = config.load()
    assert cfg.source == "built-in defaults"
    assert cfg.daemon.socket == Path("/run/wrapalert/notify.sock")
    assert cfg.daemon.trusted_uids == (0,)
    assert cfg.digest.group_by == ("daemon", "client_addr")
    assert (cfg.digest.group_wait, cfg.digest.group_interval, cfg.digest.repeat_interval) == (
        10.0,
        300.0,
        14400.0,
    )
    assert cfg.limits.mails_per_hour == 12
    assert cfg.limits.max_groups == 10000
    (sink,) = cfg.sinks
    assert isinstance(sink, SmtpSinkConfig)
    assert (sink.host, sink.port, sink.tls, sink.to) == ("localhost", 25, "none", ("root",))


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    """`-c FILE` with no such file is an error, not silently the defaults."""
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_design_example_parses(tmp_path: Path) -> None:
    """The example configuration in DESIGN.md is valid as written."""
    path = tmp_path / "wa.toml"
    path.write_text("""
[daemon]
socket = "/run/wrapalert/notify.sock"
state_dir = "/var/lib/wrapalert"
spool_dir = "/var/spool/wrapalert"
control_socket = "/run/wrapalert/control.sock"
trusted_uids = [0]

[digest]
group_by = ["daemon", "client_addr"]
group_wait = "10s"        # durations: "500ms", "10s", "5m", "4h", or a number of seconds
group_interval = "5m"
repeat_interval = "4h"

[limits]
mails_per_hour = 12
max_groups = 10000

[[sink]]
type = "smtp"
host = "localhost"
port = 25
tls = "none"
from = "wrapalert@localhost"
to = ["root"]

[[sink]]
type = "maildir"
path = "/var/mail/wrapalert/Maildir"
""")
    cfg = config.load(path)
    assert cfg.source == str(path)
    assert [s.name for s in cfg.sinks] == ["smtp", "maildir"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("4h", 14400),
        ("1d", 86400),
        ("1h30m", 5400),
        (7, 7),
        (0.25, 0.25),
        ("0s", 0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations take ms/s/m/h/d units, combinations, or plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten", "10x", "-5s", "5 s", True, -1, "1e3s"])
def test_bad_durations(text: object) -> None:
    """Anything else is refused rather than guessed."""
    with pytest.raises((TypeError, ValueError)):
        parse_duration(text)


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.loads(text, "/etc/wrapalert/wrapalert.toml")
    return str(info.value)


def test_error_names_file_line_and_key() -> None:
    """A bad value's message says where it is, which key, and what is wrong."""
    msg = error_for('[daemon]\ntrusted_uids = [0]\n\n[digest]\ngroup_wait = "soon"\n')
    assert msg.startswith("/etc/wrapalert/wrapalert.toml:5: [digest] group_wait: bad duration")


def test_unknown_key_is_named_with_its_line() -> None:
    """A typo in a key is an error at its line, not silently ignored."""
    msg = error_for("[limits]\nmails_per_hour = 3\nmail_per_hour = 4\n")
    assert msg == "/etc/wrapalert/wrapalert.toml:3: [limits] mail_per_hour: unknown key"


def test_error_in_second_sink_points_at_that_sink() -> None:
    """Errors inside the n-th [[sink]] name that sink and its own line."""
    text = '[[sink]]\ntype = "smtp"\nport = 25\n\n[[sink]]\ntype = "smtp"\nname = "b"\nport = 0\n'
    msg = error_for(text)
    assert msg.startswith("/etc/wrapalert/wrapalert.toml:8: [[sink]] #2 port: 0 is out of range")


def test_toml_syntax_error_names_the_line() -> None:
    """A TOML syntax error keeps tomllib's line and column."""
    assert "line 2" in error_for("[daemon]\nsocket = \n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[daemon]\nsocket = "relative.sock"\n', "must be an absolute path"),
        (f'[daemon]\nsocket = "/{"x" * 120}"\n', "AF_UNIX paths hold at most 107"),
        ("[daemon]\ntrusted_uids = [-1]\n", "non-negative integers"),
        ("[daemon]\ntrusted_uids = 0\n", "expected array, got integer"),
        ('[daemon]\nsocket_mode = "rw"\n', "octal string"),
        ('[digest]\ngroup_by = ["daemon", "password"]\n', "unknown field 'password'"),
        ("[digest]\ngroup_by = []\n", "needs at least one field"),
        ("[limits]\nmax_groups = 0\n", "out of range"),
        ("[limits]\nmails_per_hour = true\n", "expected integer, got boolean"),
        ('[[sink]]\ntype = "pigeon"\n', "unknown sink type 'pigeon'"),
        ('[[sink]]\nhost = "x"\n', "type: missing"),
        ('[[sink]]\ntype = "smtp"\ntls = "ssl"\n', 'use "none", "starttls" or "tls"'),
        ('[[sink]]\ntype = "smtp"\nto = []\n', "needs at least one recipient"),
        ('[[sink]]\ntype = "smtp"\nto = ["root\\r\\nBcc: x@y"]\n', "is not a mail address"),
        ('[[sink]]\ntype = "smtp"\nfrom = "a b@c"\n', "is not a mail address"),
        ('[[sink]]\ntype = "smtp"\nto = [".root@localhost"]\n', "is not a mail address"),
        ('[[sink]]\ntype = "smtp"\nto = ["root..ops@example.org"]\n', "is not a mail address"),
        ('[[sink]]\ntype = "smtp"\nto = ["root@a..b"]\n', "is not a mail address"),
        ('[daemon]\nspool_dir = "/var/sp\\nool"\n', "holds a control character"),
        (f'[daemon]\ncontrol_socket = "/{"c" * 120}"\n', "AF_UNIX paths hold at most 107"),
        ('[[sink]]\ntype = "smtp"\ntimeout = 0\n', "must be more than 0"),
        ('[[sink]]\ntype = "maildir"\n[[sink]]\ntype = "maildir"\n', "duplicate sink name"),
        ("[mystery]\nx = 1\n", "unknown table or key 'mystery'"),
        ("[story]\nbrute_force = 1\n", "out of range"),
        ('[story]\npersistent = "0s"\n', "must be more than 0"),
        ("[story]\nsweep = 3\n", "sweep"),
    ],
)
def test_bad_values_are_explained(text: str, fragment: str) -> None:
    """Each kind of bad value gets a message saying what is wrong with it."""
    assert fragment in error_for(text)


def test_story_table_sets_the_digest_story_thresholds() -> None:
    """`[story]` sets the brute-force count and the persistent age that digests use."""
    cfg = config.loads('[story]\nbrute_force = 50\npersistent = "2h"\n')
    assert cfg.story.rule == StoryRule(brute_force=50, persistent=7200.0)
    assert config.Config().story.rule == StoryRule()


def test_socket_mode_accepts_octal_strings() -> None:
    """socket_mode may be written "0660" (octal) as well as an integer."""
    assert config.loads('[daemon]\nsocket_mode = "0660"\n').daemon.socket_mode == 0o660


def test_group_by_may_not_name_a_field_twice(tmp_path: Path) -> None:
    path = tmp_path / "wrapalert.toml"
    path.write_text('[digest]\ngroup_by = ["daemon", "client_addr", "client_addr"]\n')
    with pytest.raises(ConfigError, match="names a field twice"):
        config.load(path)
