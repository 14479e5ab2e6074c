"""Does the hook still reach this daemon? hosts.allow and hosts.deny, read for what stops
refused connections from reaching it.

The hook watch (daemon/hookwatch.py) asks at start and whenever a table
changes; the canary (canary.py) asks which connection proves each hook rule.
It reads with the same linter as `wrapalert check-hosts` (checkhosts.lint,
given this installation's line) and libwrap's own decision, modelled
(hostsaccess.decide). Pure: the tables' bytes in, `Problem`s out (a table's
`/file` patterns are read through the `read` the caller passes).

A problem is a finding that means refusals will no longer reach the daemon:

* no rule of hosts.deny runs wrapalert's hook (`no_hook`);
* an error the linter finds on a hook line: libwrap rejects an option, the
  shell cannot parse the command, a program it runs is missing, no `d=%d`,
  the file ends without a newline there (libwrap then refuses without running
  it), or it names another socket or spool than this daemon's (`hook_line`);
  a hook line the linter calls outdated (`outdated`);
* a rule that decides before the hook for every documentation address of a
  family the hook rule matches: a hosts.allow rule, an earlier hosts.deny
  rule (`shadowed`), or a broken line before it, where libwrap stops reading
  (`broken_table`).

A warning that leaves the hook running (spawn without `&`, `%u`, another copy
of the client) is check-hosts' business, not the alarm's. A problem's key
holds no line number, so editing other lines never makes it a new problem.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from wrapalert import checkhosts, hostsaccess
from wrapalert.checkhosts import Installation, Table
from wrapalert.hostsaccess import Decision, Endpoint, Reader, Request
from wrapalert.lockout import shorten
from wrapalert.notice import Problem

# Clients nobody's hosts.allow should name: documentation addresses (RFC 5737, 3849,
# 9637), from the top of each range (an admin network copied from an example is more
# likely its start). A family counts as shadowed only when none of its own reach the hook.
PROBES_V4 = ("192.0.2.254", "198.51.100.254", "203.0.113.254")
PROBES_V6 = ("2001:db8::fe", "2001:db8:ffff::fe", "3fff:ffff::fe")
DAEMON = "sshd"  # the service a daemon list of ALL is probed as first
FALLBACK_DAEMON = "wrapalert-canary"  # a name only ALL, EXCEPT lists or wildcards match
MAX_DAEMONS = 32  # daemons probed per hook rule: sshd, then those that reported
_KEYWORDS = frozenset({"ALL", "EXCEPT", "LOCAL", "KNOWN", "UNKNOWN", "PARANOID"})
_SEP = re.compile(r"[, \t\r\n]+")
_PREFIX = re.compile(r"(?:[0-9]{1,3}\.){1,3}")  # libwrap's "10.1." network prefix


@dataclass(frozen=True)
class Tables:
    """hosts.allow and hosts.deny as read now (None: missing, which libwrap reads as empty)."""

    allow: bytes | None
    deny: bytes | None
    allow_path: str
    deny_path: str


@dataclass(frozen=True)
class HookRule:
    """A rule whose spawn hands the event to wrapalert."""

    table: Table
    line: int  # first physical line, 1-based
    text: str  # continuations joined, without the newline


@dataclass(frozen=True)
class Probe:
    """A connection libwrap decides by `rule`: the canary's, or the watch's witness."""

    rule: HookRule
    daemon: str
    client: str


def hook_rules(data: bytes, table: Table) -> list[HookRule]:
    """The rules of one table that run wrapalert's hook, or were meant to: a spawn that
    runs it, or a rule naming its client or its WA1 message anywhere (a line broken so
    badly that libwrap cuts the command is still ours, and its errors are the alarm's).
    Comments are not rules."""
    return [
        HookRule(table, line.number, line.text)
        for line in checkhosts.logical_lines(data)
        if not line.text.startswith("#")
        and (checkhosts.runs_wrapalert(line.text) or _names_hook(line.text))
    ]


def _names_hook(text: str) -> bool:
    words = re.split(r"[\s:()|&;]+", text)
    return "WA1" in words or any(checkhosts.is_client(w) for w in words)


def problems(
    tables: Tables,
    installation: Installation,
    reporters: Iterable[str] = (),
    read: Reader | None = None,
) -> list[Problem]:
    """What stops refusals reaching this installation's daemon, one Problem each (none:
    the hook works as far as the tables tell). `reporters`: daemons that reported
    lately, probed after sshd for rules that name no daemon."""
    deny = tables.deny or b""
    rules = hook_rules(deny, "deny")
    if not rules:
        return [no_hook(tables.deny_path, installation.command)]
    found: dict[str, Problem] = {}
    lines = {rule.line for rule in rules}
    for finding in checkhosts.lint(deny, tables.deny_path, "deny", installation):
        if finding.line not in lines:
            continue  # a line error before the hook is the decision's to report, below
        if finding.severity == "error":
            kind = "hook_line"
        elif finding.message.startswith("outdated wrapalert line"):
            kind = "outdated"
        else:
            continue  # the hook still runs: check-hosts' warning, not the alarm's
        key = f"{kind}:{finding.path}:{finding.message}"
        found.setdefault(
            key, Problem(key, kind, finding.path, finding.line, finding.message, finding.fix)
        )
    reporters = tuple(reporters)
    for rule in rules:
        for problem in shadowing(tables, rule, reporters, read):
            found.setdefault(problem.key, problem)
    return list(found.values())


def no_hook(deny_path: str, command: str) -> Problem:
    return Problem(
        key=f"no_hook:{deny_path}",
        kind="no_hook",
        path=deny_path,
        line=0,
        message=(
            f"no rule of {deny_path} runs wrapalert's hook: refused connections are not "
            "reported to wrapalert"
        ),
        fix=f"add it with: {command} --install --allow YOUR-ADMIN-NETWORK",
    )


def unreadable(path: str, error: str) -> Problem:
    """A table the watch cannot read: whether the hook runs cannot be told."""
    return Problem(
        key=f"unreadable:{path}",
        kind="unreadable",
        path=path,
        line=0,
        message=f"cannot read it ({error}): wrapalert cannot tell whether refusals reach it",
        fix="make it readable by the daemon's user (libwrap's services read it as root)",
    )


# -- who decides before the hook -----------------------------------------------------------


def shadowing(
    tables: Tables, rule: HookRule, reporters: tuple[str, ...] = (), read: Reader | None = None
) -> Iterator[Problem]:
    """For each daemon the rule matches: each address family of whose documentation
    addresses (or the clients the rule names) another line decides every one first."""
    allow, deny = tables.allow or b"", tables.deny or b""
    # A decision by any hook rule runs the hook (two hook lines: the first one reports).
    hooks = [*hook_rules(deny, "deny"), *hook_rules(allow, "allow")]
    seen: set[str] = set()
    for daemon in daemons(rule, reporters):
        families: dict[int, list[str]] = {4: [], 6: []}
        for client in clients(rule):
            if matches(rule, daemon, client):
                families[ipaddress.ip_address(client).version].append(client)
        for candidates in families.values():
            if not candidates:
                continue
            decisions = [
                hostsaccess.decide(allow, deny, Request(daemon, Endpoint(c)), read)
                for c in candidates
            ]
            if any(decided_by(d, hook) for d in decisions for hook in hooks):
                continue
            # Named after the line that decides the most of them (an admin network that
            # holds one documentation address is not the rule that shadows the rest).
            votes = Counter((d.table, d.line) for d in decisions)
            top = max(
                range(len(decisions)), key=lambda i: votes[decisions[i].table, decisions[i].line]
            )
            problem = _shadow(decisions[top], rule, daemon, candidates[top], tables)
            if problem is not None and problem.key not in seen:
                seen.add(problem.key)
                yield problem


def _shadow(
    decision: Decision, rule: HookRule, daemon: str, client: str, tables: Tables
) -> Problem | None:
    deny_path = tables.deny_path
    text = " ".join(decision.text.split())
    rule_text = shorten(decision.text)
    if decision.table == "allow":
        verb = "allows" if decision.allowed else f"refuses ({decision.why})"
        return Problem(
            key=f"shadowed:{tables.allow_path}:{text}",
            kind="shadowed",
            path=tables.allow_path,
            line=decision.line,
            message=(
                f"'{rule_text}' {verb} {daemon} connections from clients such as {client} "
                f"before {deny_path} line {rule.line} is read: libwrap never runs the hook "
                "for them"
            ),
            fix=(
                "narrow that rule to the clients that must always get in (your admin "
                "networks, e.g. 'sshd : 192.0.2.0/255.255.255.0'), or remove it"
            ),
        )
    if decision.table != "deny" or decision.line >= rule.line:
        return None  # the rule's own line decides (its errors are the linter's), or nothing
    if decision.why.startswith("line error"):
        return Problem(
            key=f"broken_table:{deny_path}:{decision.why}",
            kind="broken_table",
            path=deny_path,
            line=decision.line,
            message=(
                f"this line is broken ({decision.why}): libwrap stops reading there and "
                f"refuses every client without running the hook on line {rule.line}"
            ),
            fix="repair that line (wrapalert check-hosts says how)",
        )
    return Problem(
        key=f"shadowed:{deny_path}:{text}",
        kind="shadowed",
        path=deny_path,
        line=decision.line,
        message=(
            f"'{rule_text}' refuses {daemon} connections from clients such as {client} "
            f"before the hook on line {rule.line}: they are refused without being reported"
        ),
        fix="move the wrapalert line above that rule",
    )


def decided_by(decision: Decision, rule: HookRule) -> bool:
    """Whether `rule` made the decision (so its spawn ran)."""
    return decision.table == rule.table and decision.line == rule.line


def matches(rule: HookRule, daemon: str, client: str) -> bool:
    """Whether `rule` alone matches this daemon and client (by libwrap's rules)."""
    table = rule.text.encode("utf-8", "surrogateescape") + b"\n"
    decision = hostsaccess.decide(b"", table, Request(daemon, Endpoint(client)))
    return decision.table == "deny"


def probe(
    tables: Tables, rule: HookRule, reporters: Iterable[str] = (), read: Reader | None = None
) -> Probe | None:
    """A connection libwrap decides by `rule` with these tables (so its spawn runs): sshd
    or the rule's own daemon, and a documentation address or a client the rule names;
    None when every one is decided elsewhere (or the rule names host names only)."""
    allow, deny = tables.allow or b"", tables.deny or b""
    for daemon in daemons(rule, tuple(reporters)):
        for client in clients(rule):
            if not matches(rule, daemon, client):
                continue
            decision = hostsaccess.decide(allow, deny, Request(daemon, Endpoint(client)), read)
            if decided_by(decision, rule):
                return Probe(rule, daemon, client)
    return None


def daemons(rule: HookRule, reporters: tuple[str, ...] = ()) -> list[str]:
    """The daemon names to probe `rule` with: sshd, those that reported, the rule's own
    names, and one only ALL matches; at most MAX_DAEMONS, those the rule matches."""
    first = checkhosts.split_at(rule.text)
    named = _before_except(first[0]) if first else []
    literal = [t for t in named if _plain_name(t)]
    ordered = dict.fromkeys([DAEMON, *reporters[:MAX_DAEMONS], *literal, FALLBACK_DAEMON])
    return list(ordered)[: MAX_DAEMONS + len(literal) + 2]


def clients(rule: HookRule) -> list[str]:
    """The client addresses to probe `rule` with: one in each network the rule names
    (before EXCEPT), then the documentation addresses."""
    first = checkhosts.split_at(rule.text)
    second = checkhosts.split_at(first[1]) if first else None
    listed = second[0] if second else (first[1] if first else "")
    derived = [a for token in _before_except(listed) if (a := address_in(token)) is not None]
    return list(dict.fromkeys([*derived, *PROBES_V4, *PROBES_V6]))


def address_in(token: str) -> str | None:
    """An address the libwrap pattern `token` matches, when it names addresses: `a.b.c.d`,
    `a.b.c.d/mask`, `a.b.c.d/len`, `a.b.`, `[v6]`, `[v6]/len`; None for names and keywords."""
    text, _, length = token.partition("/")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    elif ":" in text:
        return None  # libwrap matches IPv6 only in brackets
    if _PREFIX.fullmatch(text) and text.count(".") < 4 and not length:
        parts = text.rstrip(".").split(".")
        return ".".join([*parts, *["0"] * (3 - len(parts)), "1"]) if len(parts) < 4 else None
    try:
        if not length:
            return str(ipaddress.ip_address(text))
        net = ipaddress.ip_network(f"{text}/{length}", strict=False)
    except ValueError:
        return None
    if net.num_addresses == 1:
        return str(net.network_address)
    return str(net.network_address + 1)


def _before_except(text: str) -> list[str]:
    tokens = [t for t in _SEP.split(text) if t]
    upper = [t.upper() for t in tokens]
    return tokens[: upper.index("EXCEPT")] if "EXCEPT" in upper else tokens


def _plain_name(token: str) -> bool:
    """A daemon name as it is, not a keyword or a pattern."""
    return (
        token.upper() not in _KEYWORDS
        and not any(c in token for c in "*?@[]/")
        and (not token.startswith(".") and not token.endswith("."))
    )
