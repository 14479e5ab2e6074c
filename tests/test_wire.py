"""The WA1 parser on plain bytes: what it accepts, how it normalises, why it rejects."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrapalert import notify, wire


def test_short_keys_become_long_names() -> None:
    """Every wire key maps to its long name inside the daemon."""
    data = wire.encode(
        {
            "d": "sshd",
            "p": "42",
            "u": "bob",
            "c": "bob@h",
            "a": "192.0.2.1",
            "n": "h",
            "h": "h",
            "s": "sshd@srv",
            "A": "192.0.2.254",
            "r": "2222",
            "v": "deny",
            "t": "1700000000.5",
            "H": "web1",
        }
    )
    fields = wire.parse(data)
    assert fields == {
        "daemon": "sshd",
        "daemon_pid": "42",
        "user": "bob",
        "client": "bob@h",
        "client_addr": "192.0.2.1",
        "client_name": "h",
        "client_host": "h",
        "server": "sshd@srv",
        "server_addr": "192.0.2.254",
        "client_port": "2222",
        "verdict": "deny",
        "time": "1700000000.5",
        "host": "web1",
    }


def test_client_output_parses() -> None:
    """What notify.py encodes is what wire.py accepts (the two share no code)."""
    fields, _ = notify.parse_args(["d=sshd", "a=::ffff:192.0.2.1", "n=Host.Example"])
    data = notify.encode(fields, 1700000000.25, "web1")
    parsed = wire.parse(data)
    assert parsed["client_addr"] == "192.0.2.1"
    assert parsed["client_name"] == "host.example"
    assert parsed["time"] == "1700000000.250000"
    assert parsed["host"] == "web1"


@pytest.mark.parametrize(
    ("addr", "canonical"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::1:0", "::1:0"),  # glibc's inet_ntop says ::0.1.0.0 (IPv4-compatible form)
        ("::0.1.0.0", "::1:0"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("unknown", "unknown"),
        ("paranoid", "unknown"),
        ("", "unknown"),
    ],
)
def test_addresses_are_canonical(addr: str, canonical: str) -> None:
    """Mapped IPv4 loses its prefix, IPv6 is compressed, libwrap's 'unknown' stays a fact."""
    assert wire.normalise_addr(addr) == canonical


@pytest.mark.parametrize(
    "zone",
    [
        "a" * 16,  # one byte past IFNAMSIZ - 1
        "CRITICAL:root-compromise",
        "eth0=1",
        "root@host",
        "a/b",
        "",
        "eth0%eth1",
    ],
)
def test_a_zone_no_interface_could_have_is_rejected(zone: str) -> None:
    """An IPv6 zone longer than an interface name or holding other bytes is sender text."""
    with pytest.raises(wire.WireError) as err:
        wire.parse(f"WA1\nd=sshd\na=fe80::1%{zone}\n".encode())
    assert err.value.reason == "bad_zone"


@pytest.mark.parametrize("zone", ["eth0", "enp0s31f6", "br-1a2b.100", "wlan_0", "7", "a" * 15])
def test_a_zone_an_interface_could_have_is_kept(zone: str) -> None:
    """A zone of at most 15 interface-name bytes is a fact libwrap printed: it stays."""
    assert wire.parse(f"WA1\nd=sshd\na=fe80::1%{zone}\n".encode())["client_addr"] == (
        f"fe80::1%{zone}"
    )


def test_missing_address_means_unknown() -> None:
    """An event without `a=` is still an event, from an unknown address."""
    assert wire.parse(b"WA1\nd=sshd\n")["client_addr"] == "unknown"


def test_unknown_keys_are_ignored() -> None:
    """Keys a newer client may send do not make the datagram invalid."""
    assert wire.parse(b"WA1\nd=sshd\nZ=future\nzz=1\n") == {
        "daemon": "sshd",
        "client_addr": "unknown",
        "verdict": "deny",
    }


def test_values_may_hold_equals_and_percent() -> None:
    """A value is split at the first '=' only and '%' is data (never a format string)."""
    fields = wire.parse(b"WA1\nd=sshd\nu=a=b%s%n\n")
    assert fields["user"] == "a=b%s%n"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"WA1\nd=" + b"x" * 4100, "too_large"),
        (b"WA1\nd=\xc3\n", "not_utf8"),
        (b"WA1\nd=a\x00b\n", "nul_byte"),
        (b"WA2\nd=sshd\n", "bad_tag"),
        (b"", "bad_tag"),
        (b"d=sshd\n", "bad_tag"),
        (b"WA1\nd=sshd\nno-equals-sign\n", "bad_line"),
        (b"WA1\nd=sshd\nd=other\n", "duplicate_key"),
        (b"WA1\nd=sshd\nu=" + b"x" * 256 + b"\n", "value_too_long"),
        (b"WA1\nd=sshd\nu=a\rb\n", "control_char"),
        ("WA1\nd=sshd\nu=a\x85b\n".encode(), "control_char"),  # C1 control, valid UTF-8
        (b"WA1\na=192.0.2.1\n", "missing_daemon"),
        (b"WA1\nd=\n", "missing_daemon"),
        (b"WA1\nd=sshd\na=999.1.1.1\n", "bad_addr"),
        (b"WA1\nd=sshd\na=192.0.2.1/24\n", "bad_addr"),
        (b"WA1\nd=sshd\nv=maybe\n", "bad_verdict"),
        (b"WA1\nd=sshd\np=-1\n", "bad_number"),
        (b"WA1\nd=sshd\nr=\xd9\xa3\n", "bad_char"),  # an Arabic-Indic digit
        (b"WA1\nd=ss hd\n", "bad_char"),  # libwrap turns a space into "_": a forgery
        ("WA1\nd=sshd\nn=\u0130x\n".encode(), "bad_char"),
        (b"WA1\nd=sshd\nt=nan\n", "bad_time"),
        (b"WA1\nd=sshd\nt=1e300\n", "bad_time"),
        (b"WA1\nd=sshd\nt=soon\n", "bad_time"),
    ],
)
def test_rejections_name_their_reason(data: bytes, reason: str) -> None:
    """Each kind of bad datagram is rejected with its own counter name."""
    with pytest.raises(wire.WireError) as info:
        wire.parse(data)
    assert info.value.reason == reason


def test_largest_valid_datagram_is_accepted() -> None:
    """Every field at its cap still fits the 4096-byte limit and parses."""
    fields = dict.fromkeys("dpucanhsArv", "")
    fields |= {
        "d": "x" * 255,
        "u": "y" * 255,
        "c": "z" * 255,
        "n": "n" * 255,
        "h": "h" * 255,
        "s": "s" * 255,
        "a": "2001:db8::1",
        "A": "2001:db8::2",
        "p": "9" * 9,
        "r": "65535",
        "v": "allow",
    }
    data = wire.encode(fields)
    assert len(data) <= wire.MAX_DATAGRAM
    assert wire.parse(data)["verdict"] == "allow"


_ALPHABET = st.text(
    alphabet=sorted(chr(c) for c in set(wire._ALPHABET) - {ord("\n")}), min_size=0, max_size=300
)


@settings(max_examples=400, deadline=None)
@given(
    values=st.fixed_dictionaries(
        dict.fromkeys(("d", "p", "c", "a", "n", "s", "t", "H"), _ALPHABET),
        optional=dict.fromkeys(("A", "r", "R", "i", "u"), _ALPHABET),
    ),
    addr=st.sampled_from(
        [
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "2001:DB8::1",
            "unknown",
            "bad",
            "fe80::1%eth0",
            "fe80::1%CRITICAL:root=compromise",
            "fe80::1%" + "x" * 16,
        ]
    ),
    pid=st.sampled_from(["4242", "", "12345678901", "x"]),
    when=st.sampled_from(["1700000000.5", "", "nan", "-1"]),
)
def test_the_hook_shape_fast_path_agrees_with_the_general_parser(
    values: dict[str, str], addr: str, pid: str, when: str
) -> None:
    """The client's usual datagram takes a one-regex path; it must decide exactly as the
    line-by-line parser does: same fields, or the same rejection."""
    values.update(a=addr, p=pid, t=when)
    order = ("d", "p", "c", "a", "n", "s", "A", "r", "R", "i", "u", "t", "H")
    data = wire.encode({key: values[key] for key in order if key in values})
    assert wire._HOOK_SHAPE.fullmatch(data.decode()) or not all(
        0 < len(v) <= wire.MAX_VALUE for v in values.values()
    )

    def outcome(parse: Callable[[], dict[str, str]]) -> dict[str, str] | str:
        try:
            return parse()
        except wire.WireError as exc:
            return exc.reason

    fast = outcome(lambda: wire.parse(data))
    general = outcome(lambda: wire._parse_lines(data.decode(), len(data)))
    assert fast == general


def test_bytes_outside_the_alphabet_are_rejected_with_the_most_specific_reason() -> None:
    """One translate() screens the alphabet; the reason is then worked out as before."""
    base = b"WA1\nd=sshd\na=192.0.2.1\n"
    assert wire.parse(base)["daemon"] == "sshd"
    cases = {
        b"\xc3\xa9": "bad_char",  # valid UTF-8, not in libwrap's alphabet
        b"\xff": "not_utf8",
        b"\x00": "nul_byte",
        b"\x1b": "control_char",
        b"\xc2\x85": "control_char",  # C1 NEL, valid UTF-8
        b" ": "bad_char",
        b"\r": "control_char",
    }
    for bad, reason in cases.items():
        with pytest.raises(wire.WireError) as caught:
            wire.parse(base.replace(b"sshd", b"ss" + bad + b"hd"))
        assert caught.value.reason == reason, bad


@pytest.mark.parametrize(
    "line",
    [
        b"<85>Nov 26 11:02:13 wrapalert: WA1 d=sshd p=42 a=::ffff:192.0.2.1 n=unknown",
        b"<85>Nov  6 01:02:03 web1 wrapalert[4242]: WA1 d=sshd p=42 a=192.0.2.1 n=unknown\n",
    ],
)
def test_logger_lines_parse_like_the_client_datagram(line: bytes) -> None:
    """What `logger -d -u SOCKET -t wrapalert -- WA1 k=v ...` sends, with and without
    --rfc3164's host and a pid, reads as the WA1 datagram with the same fields."""
    assert wire.parse(line) == wire.parse(b"WA1\nd=sshd\np=42\na=192.0.2.1\nn=unknown\n")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"<85>Nov 26 11:02:13 sshd: WA1 d=sshd", "bad_logger_line"),  # another tag
        (b"<85>Nov 26 11:02:13 wrapalert: d=sshd", "bad_logger_line"),  # no WA1
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 d=sshd  p=1", "bad_logger_line"),  # empty word
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 d=sshd\nH=forged", "bad_logger_line"),
        (b"<85>2026-11-26T11:02:13Z h wrapalert - - - WA1 d=sshd", "bad_logger_line"),  # 5424
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 d=ss\x1bhd", "control_char"),
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 d=ss\xc3\xa9hd", "bad_char"),
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 d=sshd d=ftpd", "duplicate_key"),
        (b"<85>Nov 26 11:02:13 wrapalert: WA1 a=192.0.2.1", "missing_daemon"),
    ],
)
def test_bad_logger_lines_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse(line)
    assert caught.value.reason == reason


def test_the_connection_and_the_hook_are_named_by_numbers() -> None:
    """R (server port) and i (the hook shell's pid) become server_port and hook_pid, and
    must be numbers like p and r; a port libwrap could not learn ("unknown") is absent."""
    line = (
        b"<85>Nov 26 11:02:13 wrapalert: WA1 d=sshd p=42 a=192.0.2.1 A=10.0.0.1 r=50000 R=22 i=4711"
    )
    fields = wire.parse(line)
    assert (fields["server_port"], fields["client_port"], fields["hook_pid"]) == (
        "22",
        "50000",
        "4711",
    )
    assert fields["server_addr"] == "10.0.0.1"
    assert "client_port" not in wire.parse(b"WA1\nd=sshd\nr=unknown\n")
    for bad in (b"R=2x", b"i=-1", b"i=unknown", b"R=12345678901"):
        with pytest.raises(wire.WireError) as caught:
            wire.parse(b"WA1\nd=sshd\n" + bad + b"\n")
        assert caught.value.reason == "bad_number", bad
