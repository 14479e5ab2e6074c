"""The WA1 wire format: parse and validate one datagram, as if no client existed.

Stdlib only. Every byte is hostile: anyone on the machine can write to the
socket or the spool. A datagram either becomes a `dict` of long field names
to clean strings or raises `WireError` whose `reason` is a short, fixed word
the daemon counts (``too_large``, ``not_utf8``, ...). Reasons never carry
input bytes, so they are safe to log and to show in status.
"""

from __future__ import annotations

import ipaddress

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
    "v": "verdict",
    "t": "time",
    "H": "host",
}
VERDICTS = frozenset({"deny", "allow"})
# libwrap's own words for "no address/name known"; kept as facts.
UNKNOWN = frozenset({"unknown", "paranoid", ""})

_CONTROL = frozenset(chr(c) for c in (*range(32), *range(127, 160)))


class WireError(ValueError):
    """A datagram was rejected; `reason` is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(data: bytes) -> dict[str, str]:
    """Decode and validate one WA1 datagram into long field names."""
    if len(data) > MAX_DATAGRAM:
        raise WireError("too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("not_utf8") from None
    if "\x00" in text:
        raise WireError("nul_byte")
    lines = text.split("\n")
    if lines[0] != TAG:
        raise WireError("bad_tag")
    if lines[-1] == "":
        lines.pop()
    return normalise(_fields(lines[1:]))


def _fields(lines: list[str]) -> dict[str, str]:
    """The known `key=value` lines, checked one by one; unknown keys are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise WireError("bad_line")
        name = FIELDS.get(key)
        if name is None:
            continue  # unknown keys are ignored: newer clients may send more
        if name in fields:
            raise WireError("duplicate_key")
        if len(value.encode("utf-8")) > MAX_VALUE:
            raise WireError("value_too_long")
        if not _CONTROL.isdisjoint(value):
            raise WireError("control_char")
        fields[name] = value
    return fields


def normalise(fields: dict[str, str]) -> dict[str, str]:
    """Validate the fields that carry meaning and put them in one canonical form."""
    if not fields.get("daemon"):
        raise WireError("missing_daemon")
    addr = fields.get("client_addr", "unknown")
    fields["client_addr"] = normalise_addr(addr)
    for key in ("client_name", "host"):
        if key in fields:
            fields[key] = fields[key].lower()
    verdict = fields.setdefault("verdict", "deny")
    if verdict not in VERDICTS:
        raise WireError("bad_verdict")
    for key in ("daemon_pid", "client_port"):
        value = fields.get(key)
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 10):
            raise WireError("bad_number")
    when = fields.get("time")
    if when is not None:
        try:
            seconds = float(when)
        except ValueError:
            raise WireError("bad_time") from None
        if not 0 <= seconds < 1e11:  # also rejects nan and inf
            raise WireError("bad_time")
    return fields


def normalise_addr(addr: str) -> str:
    """Canonical client address: `::ffff:a.b.c.d` is `a.b.c.d`; "unknown" stays a fact."""
    if addr in UNKNOWN:
        return "unknown"
    # IPv6 may carry a zone (fe80::1%eth0): ipaddress keeps it and validates the rest.
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise WireError("bad_addr") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def encode(fields: dict[str, str]) -> bytes:
    """The datagram for short-keyed fields (what notify.py sends; used by tests and tools)."""
    body = "".join(f"{key}={value}\n" for key, value in fields.items())
    return f"{TAG}\n{body}".encode()
