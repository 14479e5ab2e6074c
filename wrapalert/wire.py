"""The WA1 wire format: parse and validate one datagram, as if no client existed.

Stdlib only. Every byte is hostile: anyone on the machine can write to the
socket or the spool. A datagram either becomes a `dict` of long field names
to clean strings or raises `WireError` whose `reason` is a short, fixed word
the daemon counts (``too_large``, ``not_utf8``, ...). Reasons never carry
input bytes, so they are safe to log and to show in status.
"""

from __future__ import annotations

import ipaddress
import operator
import re
import socket

TAG = "WA1"
MAX_DATAGRAM = 4096
MAX_VALUE = 255

# Short wire keys (command line and datagram) to the names used inside the daemon.
FIELDS: dict[str, str] = {
    "d": "daemon",
    "p": "daemon_pid",
    "u": "user",
    "c": "client",
    "a": "client_addr",
    "n": "client_name",
    "h": "client_host",
    "s": "server",
    "A": "server_addr",
    "r": "client_port",
    "R": "server_port",  # an extension of DESIGN.md's keys: libwrap's %R (Debian)
    "i": "hook_pid",  # the hook's shell ($$): logger and the client in one line share it
    "v": "verdict",
    "t": "time",
    "H": "host",
}
VERDICTS = frozenset({"deny", "allow"})
# libwrap's own words for "no address/name known"; kept as facts.
UNKNOWN = frozenset({"unknown", "paranoid", ""})

_SPLIT = operator.methodcaller("split", "=", 1)
_V4_COMPATIBLE = bytes(12)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_ADDR_CACHE: dict[str, str] = {}
# An IPv6 zone: an interface name (at most IFNAMSIZ - 1 = 15 bytes) or a scope number.
_ZONE = re.compile("[A-Za-z0-9._-]{1,15}")
_ADDR_CACHE_MAX = 4096  # recent addresses; cleared when full (floods repeat themselves)
# Every value passed libwrap's filter (73 bytes) or the client's copy of it; anything
# else is a forgery. So a datagram is ASCII, and lower() or len() cannot surprise.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!%+,-./:=@_\n"
# C0 controls but the line separator, DEL, and C1 controls.
_CONTROL_RE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_SHORT_KEYS = frozenset(FIELDS)
_LONG_NAME = FIELDS.__getitem__
# The datagram the client sends for a line `wrapalert hosts-deny-line` prints (every
# real event): its fields in that order, each non-empty and short enough (A, r, R and
# i are missing from older lines, u without --ident). One C-level match takes it apart;
# anything else, valid or not, goes the general way.
_OPTIONAL = frozenset("ArRiu")
_HOOK_SHAPE = re.compile(
    "WA1\n"
    + "".join(
        f"{'(?:' if key in _OPTIONAL else ''}{key}=(?P<{FIELDS[key]}>[^\n]{{1,{MAX_VALUE}}})\n"
        f"{')?' if key in _OPTIONAL else ''}"
        for key in ("d", "p", "c", "a", "n", "s", "A", "r", "R", "i", "u", "t", "H")
    )
)
_OPTIONAL_NAMES = tuple(FIELDS[key] for key in "ArRiu")
# Numbers a datagram may carry: a pid or a port, at most 10 digits.
_NUMBERS = ("daemon_pid", "client_port", "server_port", "hook_pid")
_PORTS = frozenset({"client_port", "server_port"})
# What util-linux `logger -d -u SOCKET -t wrapalert -- WA1 d=%d ...` sends (the hook's
# C-speed variant): `<PRI>Mmm dd hh:mm:ss [host ]wrapalert[[pid]]: WA1 k=v k=v ...`.
# The message is the WA1 datagram with spaces for newlines: libwrap's expansions never
# hold a space (it is not among its 73 bytes), so the split is exact.
_LOGGER_LINE = re.compile(
    rb"<[0-9]{1,3}>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
    rb"(?:[!-~]{1,255} )?wrapalert(?:\[[0-9]{1,10}\])?: (WA1(?: [^ \n]+)*)\n?"
)
# No value can be longer than a datagram less its tag line and one "k=": below this
# size the per-value length check cannot fail and is skipped.
_SHORT_DATAGRAM = MAX_VALUE + len(TAG) + 3


class WireError(ValueError):
    """A datagram was rejected; `reason` is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(data: bytes) -> dict[str, str]:
    """Decode and validate one WA1 datagram into long field names.

    The per-datagram cost of a flood, so the common case runs in C: one
    translate() proves every byte is in the alphabet (then the text is ASCII
    and needs no UTF-8, NUL or control checks); only a datagram that fails
    it pays for finding out why.
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError("too_large")
    if data[:1] == b"<":  # a syslog line from util-linux logger (hosts-deny-line --logger)
        line = _LOGGER_LINE.fullmatch(data)
        if line is None:
            raise WireError("bad_logger_line")
        data = line[1].replace(b" ", b"\n") + b"\n"
    # isascii() first: it stops at the first high byte, where translate() would copy
    # all of a random datagram before finding out.
    if not data.isascii() or data.translate(None, _ALPHABET):
        raise WireError(_why_bad(data))
    text = data.decode("ascii")
    hook = _HOOK_SHAPE.fullmatch(text)
    if hook is not None:
        fields = hook.groupdict()
        for name in _OPTIONAL_NAMES:
            if fields[name] is None:
                del fields[name]  # an older line, or one without --ident
        return normalise(fields)
    return _parse_lines(text, len(data))


def _parse_lines(text: str, size: int) -> dict[str, str]:
    """Any datagram of the alphabet, line by line (the client's shape has a faster way)."""
    lines = text.split("\n")
    if lines[0] != TAG:
        raise WireError("bad_tag")
    del lines[0]
    if lines and lines[-1] == "":
        lines.pop()
    return normalise(_fields(lines, check_length=size > _SHORT_DATAGRAM))


def _why_bad(data: bytes) -> str:
    """The reason a datagram holds a byte outside the alphabet, most specific first."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    if "\x00" in text:
        return "nul_byte"
    if _CONTROL_RE.search(text):
        return "control_char"
    return "bad_char"


def _fields(lines: list[str], *, check_length: bool = True) -> dict[str, str]:
    """The known `key=value` lines by long name; unknown keys are skipped.

    Built by dict() over C-level splits: the per-datagram cost of a flood.
    """
    try:
        raw = dict(map(_SPLIT, lines))
    except ValueError:  # a line without "=" splits into one item
        raise WireError("bad_line") from None
    if len(raw) != len(lines):
        raise WireError("duplicate_key")
    if raw.keys() <= _SHORT_KEYS:  # the client's datagrams: renamed without a Python loop
        fields = dict(zip(map(_LONG_NAME, raw), raw.values(), strict=True))
    else:
        fields = {FIELDS[key]: value for key, value in raw.items() if key in FIELDS}
    if check_length:
        for value in fields.values():
            if len(value) > MAX_VALUE:  # ASCII by now: characters are bytes
                raise WireError("value_too_long")
    return fields


def normalise(fields: dict[str, str]) -> dict[str, str]:
    """Validate the fields that carry meaning and put them in one canonical form."""
    get = fields.get
    if not get("daemon"):
        raise WireError("missing_daemon")
    addr = get("client_addr")
    fields["client_addr"] = "unknown" if addr is None else normalise_addr(addr)
    name = get("client_name")
    if name is not None:
        fields["client_name"] = name.lower()
    host = get("host")
    if host is not None:
        fields["host"] = host.lower()
    if fields.setdefault("verdict", "deny") not in VERDICTS:
        raise WireError("bad_verdict")
    _numbers(fields)
    when = get("time")
    if when is not None:
        try:
            seconds = float(when)
        except ValueError:
            raise WireError("bad_time") from None
        if not 0 <= seconds < 1e11:  # also rejects nan and inf
            raise WireError("bad_time")
    return fields


def _numbers(fields: dict[str, str]) -> None:
    """Pids and ports are numbers; a port libwrap could not learn ("unknown") is absent."""
    for key in _NUMBERS:
        number = fields.get(key)
        # isdigit() is safe unguarded: values are ASCII, so only 0-9 pass it.
        if number is not None and not (number.isdigit() and len(number) <= 10):
            if number == "unknown" and key in _PORTS:
                del fields[key]
                continue
            raise WireError("bad_number")


def normalise_addr(addr: str) -> str:
    """Canonical client address: `::ffff:a.b.c.d` is `a.b.c.d`; "unknown" stays a fact.

    The hot path of every flood, so: the C parser (inet_pton/inet_ntop, whose output
    matches ipaddress's canonical form) and a bounded cache of recent addresses.
    """
    if addr in UNKNOWN:
        return "unknown"
    canonical = _ADDR_CACHE.get(addr)
    if canonical is None:
        canonical = _canonical(addr)
        if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[addr] = canonical
    return canonical


def _canonical(addr: str) -> str:
    # A zone (fe80::1%eth0) names an interface: IFNAMSIZ - 1 bytes at most. Anything
    # longer or odder is text a local sender chose, not a zone libwrap printed.
    if "%" in addr and not _ZONE.fullmatch(addr.partition("%")[2]):
        raise WireError("bad_zone")
    try:
        if "%" in addr:
            # ipaddress validates the address and keeps the zone.
            return str(ipaddress.IPv6Address(addr))
        if ":" not in addr:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, addr))
        packed = socket.inet_pton(socket.AF_INET6, addr)
    except (OSError, ValueError):
        raise WireError("bad_addr") from None
    if packed.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    if packed.startswith(_V4_COMPATIBLE):
        # glibc prints ::/96 in the deprecated IPv4-compatible form (::1:0 as ::0.1.0.0);
        # ipaddress's form is the canonical one every other part compares with.
        return str(ipaddress.IPv6Address(packed))
    return socket.inet_ntop(socket.AF_INET6, packed)


def encode(fields: dict[str, str]) -> bytes:
    """The datagram for short-keyed fields (what notify.py sends; used by tests and tools)."""
    body = "".join(f"{key}={value}\n" for key, value in fields.items())
    return f"{TAG}\n{body}".encode()
