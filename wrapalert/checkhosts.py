"""`wrapalert check-hosts`: find what makes libwrap silently break a rule.

libwrap reports its table errors only to syslog and runs `spawn` commands with
their output on /dev/null, so a broken hosts.deny looks fine until the day it
matters. Each check here is a behaviour of Debian's libwrap 7.6.q that
tests/test_check_hosts.py reproduces with the real library:

* a table whose last line has no newline, or a line of 2048 bytes or more
  (newline included, continuation lines joined), is an error: libwrap stops
  reading the table there; in hosts.deny that denies every client that reaches
  the line, in hosts.allow that line and the rest are ignored;
* an option libwrap does not know (the old `ALL : ALL : (cmd) &` form, or the
  rest of a command cut at an unescaped `:`), a missing or extra value, or
  allow/deny/twist before the last option: the rule denies, in hosts.allow too;
* unknown `%X` expands to nothing; `spawn` without `&` blocks the service;
  `%u` makes libwrap ask the client's identd first (up to 10 s);
* a spawned program that does not exist, is not executable, or cannot be
  parsed by the shell: the command does nothing and nobody is told;
* a wrapalert line whose client, socket or spool is not this installation's, or
  one an older wrapalert printed (a logger without `timeout` blocks for ever on a
  full queue; one without `--socket-errors=on` never lets the fallback spool; one
  without `A=%A r=%r R=%R` never bans; a durable one without `i=$$` counts twice).

Parsing is pure (bytes in, findings out); the file system is reached only
through `check_files` and the `Probe` it passes down.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wrapalert import notify
from wrapalert.hostsdeny import Install

Severity = Literal["error", "warning"]
Table = Literal["allow", "deny"]
Form = Literal["durable", "client", "logger"]  # hostsdeny.Form
# (path, must be executable) -> what is wrong with it, or None.
Probe = Callable[[str, bool], str | None]

BUFLEN = 2048  # libwrap's line buffer: a logical line plus its newline must be shorter
# libwrap's option table: keyword -> does it take a value ("need", "none", "optional").
OPTIONS = {
    "user": "need",
    "group": "need",
    "umask": "need",
    "linger": "need",
    "keepalive": "none",
    "spawn": "need",
    "twist": "need",
    "rfc931": "optional",
    "setenv": "need",
    "nice": "optional",
    "severity": "need",
    "allow": "none",
    "deny": "none",
    "banners": "need",
    "aclexec": "need",  # Debian's: runs a command whose exit status decides the match
}
MUST_BE_LAST = frozenset({"allow", "deny", "twist"})
EXPANDED = frozenset({"spawn", "twist", "setenv", "aclexec"})  # libwrap %-expands these
COMMANDS = frozenset({"spawn", "twist", "aclexec"})  # run with /bin/sh -c
# The %-expansions Debian's libwrap knows; any other `%X` expands to nothing.
EXPANSIONS = frozenset("aAcdhHnNprRsu")
_MARK = "\ue000"  # stands for an expansion inside shell words (libwrap fills it in later)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# dash builtins and keywords: no file to check for these.
_BUILTIN_WORDS = (
    "! . : [ alias bg break case cd command continue echo eval exec exit export false fg "
    "for getopts hash if kill local printf pwd read readonly return set shift test times "
    "trap true type ulimit umask unalias unset wait while {"
)
_BUILTINS = frozenset(_BUILTIN_WORDS.split())


@dataclass(frozen=True)
class Finding:
    """One problem: where, how bad, what libwrap will do, and what to write instead."""

    path: str
    line: int
    severity: Severity
    message: str
    fix: str

    def render(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}\n    fix: {self.fix}"


@dataclass(frozen=True)
class Line:
    """A logical line as libwrap reads it (backslash-newline joins the next line)."""

    number: int  # first physical line, 1-based
    text: str  # joined, without the final newline (undecodable bytes surrogate-escaped)
    size: int  # bytes libwrap buffers: joined text plus its newline
    terminated: bool  # False: the file ends without a newline
    continued: bool  # it was joined from more than one physical line


@dataclass(frozen=True)
class Option:
    keyword: str  # lower case
    value: str | None  # after libwrap's `\:` unescaping; None when absent


@dataclass(frozen=True)
class Installation:
    """What this installation's hosts.deny line says (wrapalert hosts-deny-line)."""

    client: Path
    socket: Path
    spool: Path
    line: Callable[[str, bool, Form], str]  # (daemon list, ident, form) -> the full entry
    command: str = "wrapalert hosts-deny-line"  # prints it (with -c FILE if one was given)

    @classmethod
    def of(cls, install: Install, command: str = "wrapalert hosts-deny-line") -> Installation:
        """The installation whose line `install` prints."""
        return cls(install.client, install.socket, install.spool, install.line, command)


# --- pure parsing ------------------------------------------------------------


def logical_lines(data: bytes) -> list[Line]:
    """Split a table into libwrap's logical lines."""
    physical = data.split(b"\n")
    lines: list[Line] = []
    i = 0
    while i < len(physical):
        first = i
        parts: list[bytes] = []
        terminated = False
        while i < len(physical):
            piece = physical[i]
            i += 1
            if i == len(physical):  # the bytes after the last newline
                parts.append(piece)
                break
            if piece.endswith(b"\\"):
                parts.append(piece[:-1])
                continue
            parts.append(piece)
            terminated = True
            break
        raw = b"".join(parts)
        if not terminated and len(parts) == 1 and not raw:
            break  # the file ended with a newline: nothing follows
        lines.append(
            Line(
                number=first + 1,
                text=raw.decode("utf-8", "surrogateescape"),
                size=len(raw) + terminated,
                terminated=terminated,
                continued=len(parts) > 1,
            )
        )
    return lines


def split_at(text: str, delimiter: str = ":") -> tuple[str, str] | None:
    """libwrap's split_at: the first delimiter outside `[...]` (IPv6 addresses)."""
    depth = 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == delimiter and depth == 0:
            return text[:i], text[i + 1 :]
    return None


def split_options(text: str) -> list[str]:
    """Options at each unescaped `:`; `\\:` becomes `:` (libwrap's get_field)."""
    fields: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("\\:", i):
            current.append(":")
            i += 2
            continue
        if text[i] == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    fields.append("".join(current))
    return fields


def parse_option(field: str) -> Option:
    """Keyword up to whitespace or `=`, then the value (one `=` may separate them)."""
    text = field.strip(" \t\r\n")
    end = next((i for i, c in enumerate(text) if c in " \t\r\n="), len(text))
    rest = text[end:].lstrip(" \t\r\n")
    if rest.startswith("="):
        rest = rest[1:].lstrip(" \t\r\n")
    return Option(text[:end].lower(), rest or None)


def percent_terms(value: str) -> Iterator[str]:
    """Each `%X` libwrap will expand, as the letter X (a `%` at the very end is kept)."""
    i = 0
    while i < len(value) - 1:
        if value[i] == "%":
            yield value[i + 1]
            i += 2
        else:
            i += 1


def expand(value: str) -> str:
    """The command as libwrap hands it to the shell; expansions become a marker."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "%" and i + 1 < len(value):
            letter = value[i + 1]
            if letter == "%":
                out.append("%")
            elif letter in EXPANSIONS:
                out.append(_MARK + letter)
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def shell_words(command: str) -> list[str] | None:
    """The shell's words and operators for `command`; None if the shell cannot parse it."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # dash starts a comment only at a word's start: see backgrounded()
    try:
        return list(lexer)
    except ValueError:
        return None


def backgrounded(command: str, words: list[str] | None) -> bool:
    """Whether the shell runs the whole command in the background (libwrap then need not
    wait): a final bare `&`, and no `;`, `&&`, `||` or `&` before it outside parentheses."""
    if words is None or command.rstrip().endswith("\\&"):
        return False  # unparsable, or an escaped "&": a word, not the operator
    cut = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
    words = words[:cut]  # "#" at a word's start begins a comment in dash
    if not words or words[-1] != "&":
        return False
    depth = 0
    for word in words[:-1]:
        if not all(c in "();<>|&" for c in word):
            continue
        for i, c in enumerate(word):
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c in ";|&" and depth == 0 and not (c == "&" and word[i - 1 : i] in "<>"):
                return False  # a command before this separator runs in the foreground
    return True


def program(words: list[str]) -> str | None:
    """The first program the shell runs: after `(`, operators and VAR=value words."""
    for word in words:
        if all(c in "();<>|&" for c in word) or _ASSIGNMENT.match(word):
            continue
        return word
    return None


def show(word: str) -> str:
    return word.replace(_MARK, "%")


# --- the checks ---------------------------------------------------------------


class _Linter:
    def __init__(
        self, path: str, table: Table, installation: Installation | None, probe: Probe
    ) -> None:
        self.path = path
        self.table = table
        self.installation = installation
        self.probe = probe
        self.findings: list[Finding] = []

    def add(self, line: Line, severity: Severity, message: str, fix: str) -> None:
        self.findings.append(Finding(self.path, line.number, severity, message, fix))

    def lint(self, data: bytes) -> list[Finding]:
        for line in logical_lines(data):
            self.line(line)
        return self.findings

    def stops_table(self) -> str:
        if self.table == "deny":
            return "libwrap stops reading hosts.deny here and denies EVERY client that reaches it"
        return "libwrap stops reading hosts.allow here: this rule and all after it are ignored"

    def line(self, line: Line) -> None:
        if "\x00" in line.text:
            self.add(
                line,
                "error",
                f"a NUL byte: libwrap reads the line only up to it; {self.stops_table()}",
                "remove the NUL byte (e.g. tr -d '\\000')",
            )
        if not line.terminated:
            ends = "inside a continued line (last '\\')" if line.continued else "without a newline"
            self.add(
                line,
                "error",
                f"the file ends {ends}; {self.stops_table()}",
                "end the file with a newline (echo >> FILE)"
                + ("" if not line.continued else " and remove the trailing backslash"),
            )
        elif line.size >= BUFLEN:
            self.add(
                line,
                "error",
                f"line is {line.size} bytes as libwrap reads it (continuations joined, "
                f"newline included); the limit is {BUFLEN - 1}; {self.stops_table()}",
                "split it into several shorter rules",
            )
        stripped = line.text.lstrip(" \t")
        if line.text.startswith("#"):
            if line.continued:
                self.add(
                    line,
                    "warning",
                    "comment ends with '\\': libwrap joins the next line into the comment, "
                    "so the rule there is ignored",
                    "remove the backslash at the end of the comment",
                )
            return
        if not stripped.strip(" \t\r"):
            return
        if stripped.startswith("#"):
            self.add(
                line,
                "warning",
                "'#' after leading blanks starts no comment: libwrap reads this line as a rule",
                "move the '#' to the first column",
            )
        self.rule(line)

    def rule(self, line: Line) -> None:
        first = split_at(line.text)
        if first is None:
            self.add(
                line,
                "error",
                "no ':' between daemon list and client list: libwrap ignores this line",
                "write 'DAEMONS : CLIENTS [: OPTIONS]'",
            )
            return
        daemons, rest = first
        second = split_at(rest)
        if second is None:
            return  # a rule without options
        self.options(line, daemons.strip(), split_options(second[1]))

    def options(self, line: Line, daemons: str, fields: list[str]) -> None:
        denies = "the rule then denies the client (in hosts.allow too)"
        parsed = [parse_option(field) for field in fields]
        previous: Option | None = None
        for index, (field, option) in enumerate(zip(fields, parsed, strict=True)):
            known = OPTIONS.get(option.keyword)
            # A command cut at an unescaped ':' is reported as the cut, not as what is left.
            cut = index + 1 < len(parsed) and parsed[index + 1].keyword not in OPTIONS
            if known is None:
                self.unknown(line, index, field, previous, denies)
                return  # libwrap gives up on the rule at the first bad option
            if known == "need" and option.value is None:
                self.add(line, "error", f"'{option.keyword}' needs a value; {denies}", "add it")
            elif known == "none" and option.value is not None:
                self.add(
                    line,
                    "error",
                    f"'{option.keyword}' takes no value; {denies}",
                    f"write '{option.keyword}' alone",
                )
            if option.keyword in MUST_BE_LAST and index < len(fields) - 1:
                self.add(
                    line,
                    "error",
                    f"'{option.keyword}' must be the last option; {denies}",
                    f"move '{option.keyword}' to the end of the rule",
                )
            if option.keyword in EXPANDED and option.value is not None:
                self.expansions(line, option.value)
            if option.keyword in COMMANDS and option.value is not None and not cut:
                self.command(line, daemons, option.keyword, option.value)
            previous = option

    def unknown(
        self, line: Line, index: int, field: str, previous: Option | None, denies: str
    ) -> None:
        text = field.strip()
        if not text:
            self.add(
                line,
                "error",
                f"empty option (a ':' with nothing after it); {denies}",
                "remove the extra ':'",
            )
        elif previous is not None and previous.keyword in EXPANDED:
            self.add(
                line,
                "error",
                f"unescaped ':' in the {previous.keyword} command: libwrap cuts it to "
                f"{previous.value!r}, then rejects {text!r} as an option; {denies}",
                "write '\\:' for every ':' inside the command",
            )
        elif index == 0 and text.startswith(("(", "/")):
            self.add(
                line,
                "error",
                "shell command without a keyword (the old form): libwrap rejects it as a bad "
                f"option name, the command never runs, and {denies}",
                f"write 'spawn {text}{'' if text.endswith('&') else ' &'}'",
            )
        else:
            self.add(
                line,
                "error",
                f"unknown option {parse_option(field).keyword!r}; {denies}",
                "use one of: " + ", ".join(OPTIONS),
            )

    def expansions(self, line: Line, value: str) -> None:
        letters = list(percent_terms(value))
        unknown = sorted({x for x in letters if x not in EXPANSIONS and x != "%"})
        if unknown:
            names = ", ".join(f"%{x}" for x in unknown)
            self.add(
                line,
                "warning",
                f"{names} is not a libwrap expansion: libwrap drops it (it expands to nothing)",
                "write '%%' for a literal '%'; expansions: "
                + " ".join(f"%{x}" for x in sorted(EXPANSIONS)),
            )
        if "u" in letters:
            self.add(
                line,
                "warning",
                "%u makes libwrap query the client's identd before running the command: "
                "the service waits up to 10 s, and '&' cannot hide it",
                "drop %u (wrapalert hosts-deny-line leaves it out unless --ident)",
            )

    def command(self, line: Line, daemons: str, keyword: str, value: str) -> None:
        command = value.strip()
        words = shell_words(expand(command))
        # An unparsable command is reported below, once: it does not run at all.
        if keyword == "spawn" and words is not None and not backgrounded(command, words):
            self.add(
                line,
                "warning",
                "spawn without a trailing '&': libwrap waits for the command, so the service "
                "is blocked for as long as it runs",
                "end the command with ' &', e.g. spawn (CMD) &",
            )
        if words is None:
            self.add(
                line,
                "error",
                "the shell cannot parse the command (unbalanced quote): it never runs",
                "balance the quotes",
            )
            return
        first = program(words)
        if first is not None:
            self.executable(line, first)
        if self.installation is not None:
            self.wrapalert(line, daemons, words, self.installation)

    def executable(self, line: Line, word: str) -> None:
        if _MARK in word or word in _BUILTINS:
            return
        if not word.startswith("/"):
            self.add(
                line,
                "warning",
                f"{word!r} is not an absolute path: the shell looks for it in the wrapped "
                "daemon's PATH and cwd",
                "write the program's absolute path",
            )
            return
        problem = self.probe(word, True)
        if problem is not None:
            self.add(
                line,
                "error",
                f"{word} {problem}: the shell fails and the event is lost without a trace",
                "install the program or correct the path",
            )

    def wrapalert(
        self, line: Line, daemons: str, words: list[str], installation: Installation
    ) -> None:
        at = next((i for i, w in enumerate(words) if is_client(w)), None)
        logger_at = next((i for i, w in enumerate(words) if _is_logger(w, words[i:])), None)
        if at is None and logger_at is None:
            return
        form: Form = "logger" if at is None else "client" if logger_at is None else "durable"
        start = at if at is not None else logger_at
        assert start is not None  # noqa: S101 - one of the two was found above
        args = dict(w.partition("=")[::2] for w in words[start + 1 :] if "=" in w)
        ident = "u" in args
        try:
            expected = installation.line(daemons, ident, form)
        except ValueError:
            expected = installation.line("ALL", ident, form)
        fix = f"replace the line with: {expected}"
        before = len(self.findings)
        if at is not None:
            self.client_copy(line, words[at], installation, fix)
        if not args.get("d"):
            self.add(
                line,
                "error",
                "no d=%d: the daemon rejects every event without a daemon name",
                fix,
            )
        used: list[tuple[str, str, Path]] = []
        if logger_at is not None:
            socket = _after(words[logger_at:], "-u") or "/dev/log"
            used.append(("logger's socket", socket, installation.socket))
        if at is not None:
            used.append(("client's socket", args.get("socket", notify.SOCKET), installation.socket))
            used.append(("client's spool", args.get("spool", notify.SPOOL), installation.spool))
        for what, value, configured in used:
            if os.path.normpath(show(value)) != os.path.normpath(configured):
                self.add(
                    line,
                    "error",
                    f"the {what} is {show(value)}, but this configuration's is {configured}: "
                    "its events never reach this daemon",
                    fix,
                )
        if len(self.findings) == before and _normal(words) != _normal(_command(expected)):
            self.outdated(
                line,
                words,
                logger_at=logger_at,
                form=form,
                rule=(daemons, ident),
                installation=installation,
            )

    def client_copy(self, line: Line, client: str, installation: Installation, fix: str) -> None:
        if not client.endswith(".py") or os.path.normpath(client) == str(installation.client):
            return
        problem = self.probe(client, False)
        if problem is not None:
            self.add(line, "error", f"wrapalert client {client} {problem}", fix)
        else:
            self.add(
                line,
                "warning",
                f"runs another copy of the wrapalert client ({client}); "
                f"this installation's is {installation.client}",
                fix,
            )

    def outdated(
        self,
        line: Line,
        words: list[str],
        *,
        logger_at: int | None,
        form: Form,
        rule: tuple[str, bool],
        installation: Installation,
    ) -> None:
        daemons, ident = rule
        why = "it is not the line this wrapalert prints"
        bounded = logger_at is not None and Path(words[max(logger_at - 2, 0)]).name == "timeout"
        if logger_at is not None and not bounded:
            why = (
                "its logger runs without timeout: on a full queue (a daemon stopped while "
                "its socket is held) each refusal leaves a logger blocked for ever"
            )
        elif form == "durable" and "--socket-errors=on" not in words:
            why = (
                "its logger runs without --socket-errors=on: it then exits 0 when nobody "
                "reads the socket, so the client never spools and the event is lost"
            )
        elif not {"A=%A", "r=%r", "R=%R"} <= {show(w) for w in words}:
            why = (
                "its events do not name the connection (A=%A r=%r R=%R): the daemon cannot "
                "find it in the kernel's TCP table, so none of them can ever ban"
            )
        elif form == "durable" and words.count("i=$$") < 2:  # one in each half
            why = (
                "its halves carry no i=$$: when timeout ends a logger that had already sent, "
                "the client sends the refusal again and it is counted twice"
            )
        flags = "" if daemons == "ALL" else f" --daemons {daemons}"
        flags += " --ident" if ident else ""
        flags += {"durable": "", "client": " --client", "logger": " --logger"}[form]
        self.add(
            line,
            "warning",
            f"outdated wrapalert line: {why}",
            f"print the current one with: {installation.command}{flags}",
        )


def runs_wrapalert(text: str) -> bool:
    """Whether a rule's spawn hands the event to wrapalert (its client or logger with WA1):
    the line `hosts-deny-line --install` replaces and `--uninstall` removes."""
    first = split_at(text)
    second = split_at(first[1]) if first else None
    for field in split_options(second[1]) if second else []:
        option = parse_option(field)
        if option.keyword != "spawn" or option.value is None:
            continue
        words = shell_words(expand(option.value.strip())) or []
        if any(is_client(w) or _is_logger(w, words[i:]) for i, w in enumerate(words)):
            return True
    return False


def _after(words: list[str], flag: str) -> str | None:
    """The word after `flag`, if any."""
    for i, word in enumerate(words[:-1]):
        if word == flag:
            return words[i + 1]
    return None


def _is_logger(word: str, rest: list[str]) -> bool:
    """util-linux logger sending a wrapalert event (WA1 message), not any logger."""
    return Path(word).name == "logger" and "WA1" in rest


def _command(entry: str) -> list[str]:
    """The spawn command's shell words in a whole hosts.deny entry we printed."""
    first = split_at(entry)
    second = split_at(first[1]) if first else None
    fields = split_options(second[1]) if second else []
    value = next((o.value for o in map(parse_option, fields) if o.keyword == "spawn"), None)
    return shell_words(expand(value.strip())) or [] if value else []


def _normal(words: list[str]) -> list[str]:
    """Words with the interpreter, logger and client paths as placeholders: other checks
    compare those, so an interpreter chosen with --python is not "outdated"."""
    out = []
    for word in words:
        name = Path(word).name
        if is_client(word):
            out.append("<client>")
        elif name == "logger":
            out.append("<logger>")
        elif name.startswith("python"):
            out.append("<python>")
        else:
            out.append(word)
    return out


def is_client(word: str) -> bool:
    """Whether a shell word is wrapalert's client (notify.py, or the wrapalert-notify script)."""
    base = Path(word).name
    return base == "wrapalert-notify" or (base == "notify.py" and "wrapalert" in word)


def lint(
    data: bytes,
    path: str,
    table: Table,
    installation: Installation | None = None,
    probe: Probe | None = None,
) -> list[Finding]:
    """Every finding for one table's bytes (`path` is only for the report)."""
    return _Linter(path, table, installation, probe or probe_path).lint(data)


# --- the file system ------------------------------------------------------------


def probe_path(path: str, executable: bool) -> str | None:  # noqa: FBT001 - the Probe signature
    """What stops `path` from being run (or read, for a script), or None."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if executable and not os.access(path, os.X_OK):
        return "is not executable"
    return None


def check_files(allow: Path, deny: Path, installation: Installation | None) -> list[Finding]:
    """Lint both tables; a missing file counts as empty, as libwrap does."""
    findings: list[Finding] = []
    tables: tuple[tuple[Path, Table], ...] = ((allow, "allow"), (deny, "deny"))
    for path, table in tables:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            findings.append(
                Finding(str(path), 0, "error", f"cannot read it: {exc.strerror}", "check the path")
            )
            continue
        findings += lint(data, str(path), table, installation)
    return findings
