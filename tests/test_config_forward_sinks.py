"""Configuration of the syslog and journald sinks: defaults, DESIGN.md's keys, and errors
that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NO_DIGESTS

from wrapalert import config
from wrapalert.confparse import ConfigError, SinkConfig
from wrapalert.sinks import EventSink, build
from wrapalert.sinks.journald import JournaldSink, JournaldSinkConfig
from wrapalert.sinks.syslog import SyslogSink, SyslogSinkConfig

SOURCE = "/etc/wrapalert/wrapalert.toml"


def sink_for(text: str) -> SinkConfig:
    (sink,) = config.loads(text + NO_DIGESTS, SOURCE).sinks
    return sink


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.loads(text + NO_DIGESTS, SOURCE)
    return str(info.value)


def test_syslog_defaults() -> None:
    """`type = "syslog"` alone: RFC 3164 to /dev/log, authpriv, ident wrapalert, the
    [limits] events_per_second, and it builds a forwarding sink."""
    cfg = sink_for('[[sink]]\ntype = "syslog"\n')
    assert cfg == SyslogSinkConfig()
    assert (cfg.name, cfg.socket, cfg.address) == ("syslog", Path("/dev/log"), None)
    assert (cfg.facility, cfg.ident, cfg.timeout, cfg.events_per_second) == (
        "authpriv",
        "wrapalert",
        5.0,
        None,
    )
    sink = build(cfg)
    assert isinstance(sink, SyslogSink)
    assert isinstance(sink, EventSink)


def test_journald_defaults() -> None:
    """`type = "journald"` alone: journald's native socket, and it builds a forwarding sink."""
    cfg = sink_for('[[sink]]\ntype = "journald"\n')
    assert cfg == JournaldSinkConfig()
    assert (cfg.name, cfg.socket) == ("journald", Path("/run/systemd/journal/socket"))
    sink = build(cfg)
    assert isinstance(sink, JournaldSink)
    assert isinstance(sink, EventSink)


def test_design_examples_parse() -> None:
    """DESIGN.md's keys for both sinks, every one set, side by side with a local syslog."""
    cfg = config.loads(
        """
[[sink]]
type = "syslog"
name = "collector"
address = "collector.example:514"
protocol = "tcp"
facility = "local4"
ident = "wrapalert-web1"
timeout = "2s"
events_per_second = 20

[[sink]]
type = "syslog"
socket = "/run/rsyslog/dev.sock"

[[sink]]
type = "journald"
socket = "/run/systemd/journal/socket"
events_per_second = 0.5
timeout = "250ms"
"""
        + NO_DIGESTS,
        SOURCE,
    )
    remote, local, journald = cfg.sinks
    assert remote == SyslogSinkConfig(
        name="collector",
        address=("collector.example", 514),
        protocol="tcp",
        facility="local4",
        ident="wrapalert-web1",
        timeout=2.0,
        events_per_second=20.0,
    )
    assert local == SyslogSinkConfig(socket=Path("/run/rsyslog/dev.sock"))
    assert journald == JournaldSinkConfig(events_per_second=0.5, timeout=0.25)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:514", ("127.0.0.1", 514)),
        ("[2001:db8::1]:6514", ("2001:db8::1", 6514)),
        ("[fe80::1%eth0]:514", ("fe80::1%eth0", 514)),
        ("log_host-2.example:1", ("log_host-2.example", 1)),
        ("collector:65535", ("collector", 65535)),
    ],
)
def test_syslog_addresses(address: str, parsed: tuple[str, int]) -> None:
    """`address` is host:port, with IPv6 in brackets; UDP unless `protocol` says tcp."""
    cfg = sink_for(f'[[sink]]\ntype = "syslog"\naddress = "{address}"\n')
    assert isinstance(cfg, SyslogSinkConfig)
    assert (cfg.address, cfg.protocol) == (parsed, "udp")


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ('address = "collector"', 'use "host:port"'),
        ('address = "collector:"', 'use "host:port"'),
        ('address = ":514"', 'use "host:port"'),
        ('address = "collector:0"', "port 0 is out of range 1..65535"),
        ('address = "collector:65536"', "port 65536 is out of range 1..65535"),
        ('address = "collector:\uff15\uff11\uff14"', 'use "host:port"'),  # fullwidth digits
        ('address = "2001:db8::1:514"', "write IPv6 in brackets"),
        ('address = "[collector]:514"', "is not an IPv6 address"),
        ('address = "-oops:514"', 'use "host:port"'),
        ('address = "evil host:514"', 'use "host:port"'),
        ('address = "a\\nb:514"', 'use "host:port"'),
        ("address = 514", "expected string, got integer"),
        ('address = "c:514"\nsocket = "/dev/log"', "not both"),
        ('protocol = "tcp"', "only with address"),
        ('address = "c:514"\nprotocol = "relp"', 'use "udp" or "tcp"'),
        ('facility = "kern"', 'use "user", "mail", "daemon", "auth"'),
        ('facility = "LOCAL0"', "'LOCAL0': use \"user\""),
        ('ident = "wrap alert"', 'use 1 to 32 letters, digits, ".", "_" or "-"'),
        ('ident = ""', "use 1 to 32 letters"),
        (f'ident = "{"w" * 33}"', "use 1 to 32 letters"),
        ('socket = "dev/log"', "must be an absolute path"),
        (f'socket = "/{"s" * 107}"', "AF_UNIX paths hold at most 107"),
        ('socket = "/dev/\\u0007log"', "holds a control character"),
        ("timeout = 0", "must be more than 0"),
        ("events_per_second = 0", "out of range (0, 1000000]"),
        ("events_per_second = true", "expected integer or float, got boolean"),
        ('path = "/var/log/x"', "path: unknown key"),
    ],
)
def test_bad_syslog_values_are_explained(lines: str, fragment: str) -> None:
    """Each kind of bad syslog value is refused with a message saying what is wrong."""
    assert fragment in error_for(f'[[sink]]\ntype = "syslog"\n{lines}\n')


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ('socket = "run/journal"', "must be an absolute path"),
        (f'socket = "/{"j" * 107}"', "AF_UNIX paths hold at most 107"),
        ('socket = "/run/\\r/socket"', "holds a control character"),
        ("events_per_second = 2e6", "out of range (0, 1000000]"),
        ('timeout = "soon"', "bad duration"),
        ('address = "c:514"', "address: unknown key"),
    ],
)
def test_bad_journald_values_are_explained(lines: str, fragment: str) -> None:
    """Each kind of bad journald value is refused with a message saying what is wrong."""
    assert fragment in error_for(f'[[sink]]\ntype = "journald"\n{lines}\n')


def test_error_names_the_line_of_the_bad_key() -> None:
    """A bad key in the second sink is reported with that sink and its own line."""
    text = '[[sink]]\ntype = "journald"\n\n[[sink]]\ntype = "syslog"\naddress = "c:99999"\n'
    assert error_for(text) == (
        f"{SOURCE}:6: [[sink]] #2 address: 'c:99999': port 99999 is out of range 1..65535"
    )


def test_unknown_type_lists_the_new_sinks() -> None:
    """The message for an unknown sink type names syslog and journald among the choices."""
    msg = error_for('[[sink]]\ntype = "rsyslog"\n')
    assert "unknown sink type 'rsyslog'" in msg
    # The registry lists the types by name: the order is not the point, both names are.
    assert '"syslog"' in msg
    assert '"journald"' in msg


def test_both_default_names_can_coexist_with_jsonl() -> None:
    """syslog, journald and jsonl side by side keep their default names, all distinct."""
    cfg = config.loads(
        '[[sink]]\ntype = "syslog"\n[[sink]]\ntype = "journald"\n[[sink]]\ntype = "jsonl"\n'
        + NO_DIGESTS,
        SOURCE,
    )
    assert [s.name for s in cfg.sinks] == ["syslog", "journald", "jsonl"]
