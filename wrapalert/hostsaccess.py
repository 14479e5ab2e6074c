"""libwrap's access decision: which rule of hosts.allow and hosts.deny decides a connection.

A pure model of Debian's libwrap 7.6.q (hosts_access.c, options.c, misc.c),
checked against the real library through hosts_ctl (tests/test_hostsaccess.py):
`decide(allow, deny, request)` gives the verdict hosts_ctl gives for the same
tables and the same request, and says which line decided it and why. The
lock-out check (`lockout.py`) asks it about an admin's SSH client before
`hosts-deny-line --install` writes anything.

What it follows, as libwrap does:

* tables are read with libwrap's line reader: backslash-newline joins lines,
  a NUL byte cuts a physical line there and the next line is appended, and a
  line without its newline (the file's end, or 2048 bytes joined) is an error
  that ends the table: in hosts.allow nothing below it counts, in hosts.deny
  every client that reaches it is refused;
* `#` in the first column starts a comment (nowhere else);
* lists split at blanks and commas; `EXCEPT`; `ALL`, `KNOWN`, `LOCAL`,
  `UNKNOWN`, `PARANOID`; `.suffix`, `prefix.`, `*`/`?` wildcards (case-blind,
  as every comparison); `a.b.c.d/m.m.m.m`, `a.b.c.d/len`, `[v6]`, `[v6]/len`
  (with libwrap's quirks: a mask of 255.255.255.255 and a length of 0 match
  nothing useful, host bits in the network match nothing); `user@host` and
  `daemon@host`; `/file` patterns (read through `read`); `::ffff:a.b.c.d`
  clients compare as `a.b.c.d`;
* options of the matching rule: `allow`, `deny`, `twist` (counted as a
  refusal: the client never reaches the service), and every option error
  libwrap turns into a refusal (unknown keyword, missing or extra value, a
  last-only option before the end, bad umask/nice/linger/rfc931/severity
  values, unknown user or group).

What it cannot know, and assumes: host names are those in the request
(`unknown` unless given: no DNS lookup is made, so a host-name pattern never
matches an address-only request; `needs_dns` says one was consulted);
netgroups match nothing (no NIS); an `aclexec` command succeeds (`uncertain`
says one was met); the ident user is the request's.
"""

from __future__ import annotations

import grp
import pwd
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from wrapalert.checkhosts import MUST_BE_LAST, OPTIONS, parse_option, split_at, split_options

Table = Literal["allow", "deny"]
# (path of a /file pattern) -> its bytes, or None when it cannot be read (no match).
Reader = Callable[[str], bytes | None]

BUFLEN = 2048  # libwrap's logical line buffer, newline and NUL included
UNKNOWN, PARANOID = "unknown", "paranoid"
_SEP = re.compile(r"[, \t\r\n]+")
_NOT_INADDR = re.compile(r"[^0-9./]")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_INADDR_NONE = 0xFFFFFFFF
_DIGITS, _HEX, _C_SPACE = "0123456789", "0123456789abcdefABCDEF", " \t\n\v\f\r"
_FACILITIES = frozenset(
    ("kern", "user", "mail", "daemon", "auth", "lpr", "news", "uucp", "cron")
) | {f"local{n}" for n in range(8)}
_LEVELS = frozenset(("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"))
_DECIMAL = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+")
_OCTAL = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-7]+")


def _fold(text: str) -> str:
    """ASCII lower case: strcasecmp folds nothing else."""
    return text.translate(_LOWER)


def _eq(a: str, b: str) -> bool:
    return _fold(a) == _fold(b)


@dataclass(frozen=True)
class Endpoint:
    """One end of the connection as libwrap sees it: address and host name (or `unknown`)."""

    addr: str = UNKNOWN
    name: str = UNKNOWN


@dataclass(frozen=True)
class Request:
    """What hosts_ctl is asked: the daemon's name, the client, its ident user, the server."""

    daemon: str
    client: Endpoint
    user: str = UNKNOWN
    server: Endpoint = field(default_factory=Endpoint)


@dataclass(frozen=True)
class Decision:
    """libwrap's verdict and what made it."""

    allowed: bool
    table: Table | None  # the table whose line decided; None: no rule matched (allowed)
    line: int  # that line's number (first physical line), 0 when table is None
    text: str  # that line, as libwrap read it (continuations joined), without its newline
    why: str  # e.g. "the rule matches", "option 'deny'", "line error: no newline at the end"
    # hosts.allow ended early at this line (an error there): rules below it never count.
    allow_stopped: int | None = None
    needs_dns: bool = False  # a host-name pattern was consulted: with DNS it may differ
    uncertain: str | None = None  # something the model cannot evaluate (an aclexec command)


@dataclass(frozen=True)
class Record:
    """One logical line from libwrap's reader."""

    line: int  # first physical line, 1-based
    text: str  # bytes as latin-1 (one char per byte), newline included when present
    error: str | None  # why libwrap rejects the line (and stops the table), or None


# --- the reader ------------------------------------------------------------------


def records(data: bytes) -> Iterator[Record]:
    """The table as libwrap's xgets() hands it out, line by line.

    fgets reads at most the room left in the 2048-byte buffer, up to and with a
    newline; a NUL cuts what was read; backslash-newline drops both characters and
    reads on. A buffer filled without a newline is handed out as it is (an error).
    """
    pos, physical = 0, 0
    while pos < len(data):
        first = physical + 1
        out = bytearray()
        room = BUFLEN
        complete = False
        while pos < len(data) and room > 1:
            end = data.find(b"\n", pos, pos + room - 1)
            chunk = data[pos : end + 1] if end >= 0 else data[pos : pos + room - 1]
            pos += len(chunk)
            got = chunk.split(b"\0", 1)[0]
            if got.endswith(b"\n"):
                physical += 1
                if got.endswith(b"\\\n"):
                    got = got[:-2]
                else:
                    out += got
                    complete = True
                    break
            elif end >= 0:
                physical += 1  # a NUL hid this newline: the next line is appended
            out += got
            room -= len(got)
        if not out and not complete:
            return  # nothing left but what the reader skips (a trailing "\\\n", NULs)
        text = out.decode("latin-1")
        if not complete:
            why = "no newline at its end" if room > 1 else f"it is {BUFLEN} bytes or longer"
            yield Record(first, text, f"line error: {why}")
            return  # libwrap stops reading the table at an error
        yield Record(first, text, None)


# --- addresses, as inet_aton and libwrap parse them --------------------------------


def inet_aton(text: str) -> int | None:
    """glibc's inet_aton (which inet_addr calls): one to four parts, each decimal, 0-octal
    or 0x-hex, the last filling what is left; a blank and anything after it are ignored.
    None where it fails."""
    parts: list[int] = []
    i = 0
    while True:
        part = _aton_part(text, i)
        if part is None:
            return None
        value, i, digit = part
        if text[i : i + 1] != ".":
            break
        if len(parts) > 2 or value > 0xFF:
            return None
        parts.append(value)
        i += 1
    trailing = text[i : i + 1]
    if (trailing and trailing not in _C_SPACE) or not digit:
        return None
    if value > 0xFFFFFFFF >> (8 * len(parts)):
        return None
    for shift, byte in zip((24, 16, 8), parts, strict=False):
        value |= byte << shift
    return value


def _aton_part(text: str, i: int) -> tuple[int, int, bool] | None:
    """One part of inet_aton's address from `i`: (value, where it ends, any digit seen)."""
    if text[i : i + 1] not in tuple(_DIGITS):
        return None
    value, base, digit = 0, 10, False
    if text[i] == "0":
        i += 1
        if text[i : i + 1] in ("x", "X"):
            base, i = 16, i + 1
        else:
            base, digit = 8, True
    digits = {8: "01234567", 10: _DIGITS, 16: _HEX}[base]
    while i < len(text) and text[i] in digits:
        value = value * base + int(text[i], 16)
        i, digit = i + 1, True
        if value > 0xFFFFFFFF:
            return None
    if base == 8 and text[i : i + 1] in ("8", "9"):
        return None
    return value, i, digit


def dot_quad_addr(text: str) -> int:
    """libwrap's dot_quad_addr: four runs of non-dots, then inet_addr (INADDR_NONE on
    failure, and for 255.255.255.255 itself)."""
    runs = len([run for run in text.split(".") if run])
    if runs != 4:
        return _INADDR_NONE
    value = inet_aton(text)
    return _INADDR_NONE if value is None else value


def _atoi(text: str) -> int:
    match = re.match(r"[ \t\n\r\f\v]*([+-]?[0-9]+)", text)
    return int(match.group(1)) if match else 0


def _inet6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
    except OSError:
        return None


def client_addr(addr: str) -> str:
    """The address as libwrap compares it: a v4-mapped IPv6 address as its IPv4 form."""
    if _fold(addr[:7]) == "::ffff:" and dot_quad_addr(addr[7:]) != _INADDR_NONE:
        return addr[7:]
    return addr


def _wildcard(pattern: str, text: str) -> bool:
    """Tatu Ylonen's `*`/`?` matcher, as Debian's libwrap applies it: whole string, case-blind."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL | re.IGNORECASE | re.ASCII) is not None


# --- matching ------------------------------------------------------------------------


def string_match(token: str, string: str) -> bool:  # noqa: PLR0911 - libwrap's order of pattern kinds
    """A token against a daemon name, a user, a host name or an address."""
    if "*" in token or "?" in token:
        return _wildcard(token, string)
    if token.startswith("."):
        n = len(string) - len(token)
        return n > 0 and _eq(token, string[n:])
    if _eq(token, "ALL"):
        return True
    if _eq(token, "KNOWN"):
        return not _eq(string, UNKNOWN)
    if token.endswith("."):
        return _fold(string).startswith(_fold(token))
    if _eq(token, string):
        return True
    if len(token) > 1 and token[0] == "[" and token[-1] == "]":
        pattern, address = _inet6(token[1:-1]), _inet6(string)
        return pattern is not None and pattern == address
    return False


def masked_match(net: str, mask: str, addr: str) -> bool:
    """`net/mask`: IPv4 with a dotted mask or a length, or `[v6]/len`."""
    return _masked4(net, mask, addr) or _masked6(net, mask, addr)


def _masked4(net_token: str, mask_token: str, addr_text: str) -> bool:
    addr = dot_quad_addr(addr_text)
    net = dot_quad_addr(net_token)
    if _INADDR_NONE in (addr, net):
        return False
    mask = dot_quad_addr(mask_token)
    if mask == _INADDR_NONE:
        length = _atoi(mask_token)
        if not 0 <= length <= 32:
            return False
        # A shift by 32 is a shift by 0 on x86: a length of 0 masks nothing away.
        mask = (0xFFFFFFFF << ((32 - length) % 32)) & 0xFFFFFFFF
    return addr & mask == net


def _masked6(net_token: str, mask_token: str, addr_text: str) -> bool:
    addr = _inet6(addr_text)
    if addr is None or len(net_token) < 2 or net_token[0] != "[" or net_token[-1] != "]":
        return False
    net = _inet6(net_token[1:-1])
    length = _atoi(mask_token)
    if net is None or not 0 <= length <= 128:
        return False
    bits = int.from_bytes(addr, "big") ^ int.from_bytes(net, "big")
    return bits >> (128 - length) == 0 if length else True


class _Matcher:
    """One request against tables; remembers what it could not know for sure."""

    def __init__(self, request: Request, read: Reader | None) -> None:
        self.request = request
        self.client = Endpoint(client_addr(request.client.addr), request.client.name)
        self.server = Endpoint(client_addr(request.server.addr), request.server.name)
        self.read = read
        self.needs_dns = False
        self.uncertain: str | None = None

    def list_match(self, tokens: list[str], match: Callable[[str], bool]) -> bool:
        for i, token in enumerate(tokens):
            if _eq(token, "EXCEPT"):
                return False
            if match(token):
                rest = next(
                    (j for j in range(i + 1, len(tokens)) if _eq(tokens[j], "EXCEPT")), None
                )
                return rest is None or not self.list_match(tokens[rest + 1 :], match)
        return False

    def server_match(self, token: str) -> bool:
        at = split_at(token[1:], "@")
        if at is None:
            return string_match(token, self.request.daemon)
        daemon = token[0] + at[0]
        return string_match(daemon, self.request.daemon) and self.host_match(at[1], self.server)

    def client_match(self, token: str) -> bool:
        at = split_at(token[1:], "@")
        if at is None:
            return self.host_match(token, self.client)
        user = token[0] + at[0]
        return self.host_match(at[1], self.client) and string_match(user, self.request.user)

    def host_match(self, token: str, host: Endpoint) -> bool:  # noqa: PLR0911 - libwrap's order
        if token.startswith("@"):
            self.needs_dns = True  # innetgr() on the host name; no NIS here: no match
            return False
        if token.startswith("/"):
            return self.hostfile_match(token, host)
        if _eq(token, "KNOWN"):
            self.needs_dns = True
            return not _eq(host.addr, UNKNOWN) and _known(host.name)
        if _eq(token, "LOCAL"):
            self.needs_dns = True
            return "." not in host.name and _known(host.name)
        net = split_at(token, "/")
        if net is not None:
            return masked_match(net[0], net[1], host.addr)
        if string_match(token, host.addr):
            return True
        if _NOT_INADDR.search(token) is None:
            return False
        self.needs_dns = True
        return string_match(token, host.name)

    def hostfile_match(self, path: str, host: Endpoint) -> bool:
        data = self.read(path) if self.read is not None else None
        if data is None:
            return False
        return any(self.host_match(t, host) for t in data.decode("latin-1").split())

    def table(self, data: bytes) -> tuple[Literal["no", "yes", "error"], Record | None]:
        """table_match: the first rule that matches (or the error that ends the table)."""
        for record in records(data):
            if record.error is not None:
                return "error", record
            text = record.text
            if text.startswith("#") or not text.strip(" \t\r\n"):
                continue
            first = split_at(text, ":")
            if first is None:
                continue  # "missing ':' separator": libwrap warns and reads on
            daemons, rest = first
            clients = split_at(rest, ":")
            client_list = clients[0] if clients else rest
            if self.list_match(_tokens(daemons), self.server_match) and self.list_match(
                _tokens(client_list), self.client_match
            ):
                return "yes", record
        return "no", None

    def options(self, record: Record) -> tuple[Literal["allow", "deny", "none"], str]:
        """process_options for the matching rule: a verdict of its own, or none."""
        first = split_at(record.text, ":")
        second = split_at(first[1], ":") if first else None
        fields = split_options(second[1]) if second else []
        for index, raw in enumerate(fields):
            option = parse_option(raw)
            problem = _option_error(option.keyword, option.value, last=index == len(fields) - 1)
            if problem is not None:
                return "deny", f"option error: {problem}"
            if option.keyword == "aclexec":
                self.uncertain = (
                    f"line {record.line}: an aclexec command decides (taken as success)"
                )
            elif option.keyword in ("allow", "deny"):
                return (
                    "allow" if option.keyword == "allow" else "deny"
                ), f"option {option.keyword!r}"
            elif option.keyword == "twist":
                return "deny", "option 'twist': another program answers instead of the service"
        return "none", ""


def _option_error(keyword: str, value: str | None, *, last: bool) -> str | None:
    """What makes libwrap jump out of a rule's options with a refusal, or None."""
    need = OPTIONS.get(keyword)
    if need is None:
        return f"unknown option {keyword!r}"
    if need == "need" and value is None:
        return f"{keyword!r} needs a value"
    if need == "none" and value is not None:
        return f"{keyword!r} takes no value"
    if keyword in MUST_BE_LAST and not last:
        return f"{keyword!r} must be the last option"
    return _bad_value(keyword, value)


def _known(name: str) -> bool:
    return not _eq(name, UNKNOWN) and not _eq(name, PARANOID)


def _tokens(text: str) -> list[str]:
    return [t for t in _SEP.split(text) if t]


def _bad_value(keyword: str, value: str | None) -> str | None:
    """Why libwrap refuses this option's value (and the connection with it), or None."""
    check = _VALUE_CHECKS.get(keyword)
    return None if value is None or check is None else check(value)


def _umask(value: str) -> str | None:
    if _OCTAL.fullmatch(value) and not int(value, 8) & 0xFFFFFFFF & ~0o777:
        return None
    return f"bad umask value {value!r}"


def _integer(what: str, *, positive: bool = False) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if _DECIMAL.fullmatch(value) and (int(value) > 0 or not positive):
            return None
        return f"bad {what} {value!r}"

    return check


def _severity(value: str) -> str | None:
    facility, dot, level = value.partition(".")
    if dot and _fold(facility) in _FACILITIES and _fold(level) in _LEVELS:
        return None
    if not dot and _fold(value) in _LEVELS:
        return None
    return f"bad syslog facility or severity {value!r}"


def _user(value: str) -> str | None:
    user, dot, group = value.partition(".")
    return (_group(group) if dot else None) or _lookup(pwd.getpwnam, "user", user)


def _group(value: str) -> str | None:
    return _lookup(grp.getgrnam, "group", value)


def _lookup(find: Callable[[str], object], what: str, name: str) -> str | None:
    try:
        find(name)
    except KeyError:
        return f"unknown {what} {name!r}"
    return None


_VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "umask": _umask,
    "nice": _integer("nice value"),
    "linger": _integer("linger value"),
    "rfc931": _integer("rfc931 timeout", positive=True),
    "severity": _severity,
    "user": _user,
    "group": _group,
}


def names_clients(allow: bytes, daemon: str) -> int | None:
    """The first hosts.allow line that lets some client reach `daemon`: its daemon list
    matches, it names a client before any EXCEPT, and its options refuse nobody. None
    when there is none (before a line error, which ends the table)."""
    matcher = _Matcher(Request(daemon, Endpoint()), None)
    for record in records(allow):
        if record.error is not None:
            return None
        first = split_at(record.text, ":")
        if record.text.startswith("#") or first is None:
            continue
        daemons, rest = first
        clients = split_at(rest, ":")
        named = _tokens(clients[0] if clients else rest)
        if not named or _eq(named[0], "EXCEPT"):
            continue
        if matcher.list_match(_tokens(daemons), matcher.server_match):
            verdict, _ = matcher.options(record)
            if verdict != "deny":
                return record.line
    return None


# --- the decision ---------------------------------------------------------------------


def decide(allow: bytes, deny: bytes, request: Request, read: Reader | None = None) -> Decision:
    """hosts_access(): hosts.allow first, then hosts.deny, else allowed."""
    matcher = _Matcher(request, read)
    allow_stopped: int | None = None

    def made(allowed: bool, table: Table | None, record: Record | None, why: str) -> Decision:  # noqa: FBT001 - a local shorthand
        return Decision(
            allowed=allowed,
            table=table,
            line=record.line if record else 0,
            text=record.text.rstrip("\n") if record else "",
            why=why,
            allow_stopped=allow_stopped,
            needs_dns=matcher.needs_dns,
            uncertain=matcher.uncertain,
        )

    tables: tuple[tuple[Table, bytes], ...] = (("allow", allow), ("deny", deny))
    for table, data in tables:
        result, record = matcher.table(data)
        if result == "error":
            assert record is not None  # noqa: S101 - an error names its line
            if table == "allow":
                allow_stopped = record.line
                continue
            return made(False, "deny", record, record.error or "line error")
        if result == "no":
            continue
        assert record is not None  # noqa: S101 - a match names its line
        verdict, why = matcher.options(record)
        if verdict != "none":
            return made(verdict == "allow", table, record, why)
        return made(table == "allow", table, record, "the rule matches")
    return made(True, None, None, "no rule matches")
