"""Would these tables lock the admin out of ssh? Asked before `hosts-deny-line --install`
writes anything, and by `check-hosts`.

The hosts.deny line refuses every client the daemons it names see, unless
hosts.allow allows the client first. Two ways that locks people out, each a
`checkhosts.Finding` (an error) that says what libwrap would do, why (the
deciding line, from `hostsaccess.decide`), and the hosts.allow line to add:

* the client of the SSH session the command runs in would be refused by
  sshd: SSH_CONNECTION (or SSH_CLIENT) of this process, or, when sudo or su
  cleared them, of its nearest ancestor that has them (the login shell sshd
  started); an empty SSH_CONNECTION means: no SSH session;
* hosts.deny refuses sshd to clients hosts.allow does not name, and
  hosts.allow names none for sshd: nobody can log in by ssh (checked when
  there is no SSH session to ask about).

Host names in hosts.allow need DNS at the moment of the login: the session's
client is judged by its address alone, so only an address or network keeps it
in for sure. `allow_pattern` turns what an admin writes (an address, a CIDR
network, a host name) into the pattern Debian's libwrap matches, and refuses
anything else, so no value can add a rule, an option or a list of its own.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wrapalert import hostsaccess
from wrapalert.checkhosts import Finding
from wrapalert.hostsaccess import Decision, Endpoint, Request

DAEMON = "sshd"  # Debian's sshd (and trixie's sshd-session) asks libwrap under this name
# Clients hosts.allow is unlikely to name (documentation addresses): how hosts.deny
# treats "anybody else".
STRANGERS = ("203.0.113.254", "2001:db8:ffff::fe")
_ANCESTORS = 32  # how far up the process tree to look for the SSH session
_HOSTNAME = re.compile(
    r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Words libwrap reads as keywords, not host names.
_KEYWORDS = frozenset({"all", "except", "known", "unknown", "local", "paranoid"})


@dataclass(frozen=True)
class Session:
    """The SSH connection this command runs in: its client and the server's address."""

    client: str
    server: str | None
    source: str  # where it was found, for the message: "SSH_CONNECTION", "SSH_CLIENT of pid N"


def ssh_session(
    environ: Mapping[str, str], *, proc: Path = Path("/proc"), pid: int | None = None
) -> Session | None:
    """The SSH session, from the environment, else from the nearest ancestor's."""
    if "SSH_CONNECTION" in environ or "SSH_CLIENT" in environ:
        return _session(environ, "")
    current = os.getpid() if pid is None else pid
    for _ in range(_ANCESTORS):
        current = _parent(proc, current)
        if current <= 1:
            return None
        try:
            raw = (proc / str(current) / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read: look further up
        env = dict(v.partition("=")[::2] for v in raw.decode("utf-8", "replace").split("\0") if v)
        if "SSH_CONNECTION" in env or "SSH_CLIENT" in env:
            return _session(env, f" of pid {current}")
    return None


def _parent(proc: Path, pid: int) -> int:
    try:
        stat = (proc / str(pid) / "stat").read_text(errors="replace")
        return int(stat.rpartition(")")[2].split()[1])  # the name may hold spaces and ')'
    except (OSError, ValueError, IndexError):
        return 0


def _session(env: Mapping[str, str], where: str) -> Session | None:
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        fields = env.get(name, "").split()
        if not fields:
            continue
        client = _address(fields[0])
        server = _address(fields[2]) if name == "SSH_CONNECTION" and len(fields) > 2 else None
        if client is not None:
            return Session(client, server, name + where)
    return None


def _address(text: str) -> str | None:
    """The address, canonical, without an interface zone (libwrap's matching ignores it)."""
    try:
        return str(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return None


# --- what to write into hosts.allow ------------------------------------------------


def allow_pattern(text: str) -> str:
    """The libwrap pattern for an address, a network or a host name; ValueError (naming
    the problem) for anything else.

    IPv4 networks become `a.b.c.d/m.m.m.m` (every libwrap reads it), a /32 the bare
    address (libwrap cannot parse the mask 255.255.255.255); IPv6 is bracketed,
    `[a::b]` or `[a::]/len`; a v4-mapped address is written as IPv4 (libwrap compares
    such clients as IPv4); host bits are cleared (libwrap matches nothing with them).
    """
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"{text!r}: not an address, a network or a host name")
    plain = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "/" in plain or ":" in plain or _looks_numeric(plain):
        return _network_pattern(text)
    if plain.lower() in _KEYWORDS:
        raise ValueError(
            f"{text!r} is a libwrap keyword, not a client: name an address or a network"
        )
    if not _HOSTNAME.fullmatch(plain) or len(plain) > 253:
        raise ValueError(f"{text!r}: not an address, a network or a host name")
    return plain


def _looks_numeric(text: str) -> bool:
    return all(c.isdigit() or c == "." for c in text)


def _network_pattern(text: str) -> str:
    raw = text
    if text.startswith("["):
        inner, _, length = text[1:].partition("]")
        if (length and not length.startswith("/")) or ":" not in inner:
            raise ValueError(f"{text!r}: not an address or a network ([...] is for IPv6)")
        raw = inner + length
    if "%" in raw:
        raise ValueError(f"{text!r}: an interface zone (%...) cannot be matched: leave it out")
    address, _, length = raw.partition("/")
    try:
        mapped = ipaddress.ip_address(address)
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r}: not an address or a network (e.g. 192.0.2.7, 192.0.2.0/24, 2001:db8::/32)"
        ) from None
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        # libwrap compares a v4-mapped client as IPv4: say it in IPv4.
        if net.prefixlen < 96:
            raise ValueError(f"{text!r}: a v4-mapped network needs a prefix of 96 or more")
        net = ipaddress.ip_network(f"{mapped.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
    if isinstance(net, ipaddress.IPv4Network):
        if net.prefixlen == 32:
            return str(net.network_address)
        return f"{net.network_address}/{net.netmask}"
    if net.prefixlen == 128:
        return f"[{net.network_address}]"
    return f"[{net.network_address}]/{net.prefixlen}"


def allow_line(pattern: str) -> str:
    """The hosts.allow rule that lets `pattern` reach sshd."""
    return f"{DAEMON} : {pattern}"


# --- the check -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    """hosts.allow and hosts.deny as they are (or would be), with their paths for messages."""

    allow: bytes
    deny: bytes
    allow_path: str
    deny_path: str


def findings(tables: Tables, session: Session | None, *, command: str) -> list[Finding]:
    """The lock-out risks of these tables, as errors; `command` is the hosts-deny-line
    command (with -c FILE) the fix may suggest."""
    if session is not None:
        return _session_findings(tables, session, command)
    return _anybody_findings(tables, command)


def _session_findings(tables: Tables, session: Session, command: str) -> list[Finding]:
    addrs = [session.client]
    version = ipaddress.ip_address(session.client)
    if isinstance(version, ipaddress.IPv4Address):
        addrs.append(f"::ffff:{session.client}")  # what a dual-stack sshd socket reports
    server = Endpoint(session.server) if session.server else Endpoint()
    for addr in addrs:
        decision = hostsaccess.decide(
            tables.allow, tables.deny, Request(DAEMON, Endpoint(addr), server=server), _read
        )
        if decision.allowed:
            continue
        line = allow_line(allow_pattern(session.client))
        message = (
            f"libwrap would refuse ssh to your own session's client {addr} "
            f"({session.source}): {_why(decision, tables)}"
        )
        return [_finding(decision, tables, message, _fix(decision, tables, line, command))]
    return []


def _anybody_findings(tables: Tables, command: str) -> list[Finding]:
    for stranger in STRANGERS:
        decision = hostsaccess.decide(b"", tables.deny, Request(DAEMON, Endpoint(stranger)), _read)
        if decision.allowed or hostsaccess.names_clients(tables.allow, DAEMON) is not None:
            continue
        message = (
            f"{tables.deny_path} refuses ssh to every client {tables.allow_path} does not name "
            f"({_where(decision, tables)}), and {tables.allow_path} names none for {DAEMON}: "
            "nobody could log in by ssh"
        )
        example = allow_line(allow_pattern("192.0.2.0/24"))
        fix = (
            f"add your admins' addresses or networks to {tables.allow_path}, e.g. '{example}' "
            f"(or run: {command} --install --allow 192.0.2.0/24 ..., with your networks)"
        )
        return [_finding(decision, tables, message, fix)]
    return []


def _finding(decision: Decision, tables: Tables, message: str, fix: str) -> Finding:
    path = tables.deny_path if decision.table == "deny" else tables.allow_path
    return Finding(path, decision.line, "error", message, fix)


def _where(decision: Decision, tables: Tables) -> str:
    path = tables.deny_path if decision.table == "deny" else tables.allow_path
    return f"{path} line {decision.line} ({shorten(decision.text)})"


def shorten(text: str, width: int = 60) -> str:
    """A rule as a message quotes it: blanks collapsed, long ones cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _why(decision: Decision, tables: Tables) -> str:
    if decision.table == "allow":
        why = f"{_where(decision, tables)} refuses it ({decision.why})"
    elif decision.why.startswith("line error"):
        why = (
            f"{tables.deny_path} line {decision.line} is broken ({decision.why}): libwrap "
            "refuses every client that reaches it"
        )
    else:
        why = f"{_where(decision, tables)} refuses it, and no rule of {tables.allow_path} allows it"
    if decision.allow_stopped is not None:
        why += (
            f"; {tables.allow_path} stops at line {decision.allow_stopped} (a broken line): "
            "libwrap never reads the rules below it"
        )
    if decision.needs_dns:
        why += (
            "; host-name patterns were not counted: they need DNS at login time, an address "
            "does not"
        )
    return why


def _fix(decision: Decision, tables: Tables, line: str, command: str) -> str:
    pattern = line.partition(" : ")[2]
    if decision.allow_stopped is not None:
        return (
            f"repair {tables.allow_path} line {decision.allow_stopped} first (wrapalert "
            f"check-hosts shows what is wrong), then add: {line}"
        )
    if decision.table == "allow":
        return f"add '{line}' to {tables.allow_path} above line {decision.line}"
    return f"add '{line}' to {tables.allow_path} (or run: {command} --install --allow {pattern})"


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None
