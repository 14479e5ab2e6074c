"""Notices: the daemon's own news about the alarm, each a mail of its own (not a digest).

Three kinds, each sent at once to every digest sink, past the mail cap:

* `alarm-off`: refusals no longer reach the daemon (the hook watch, the link
  check or the canary found why: a `Problem` each); sent once per distinct
  problem (its `key`);
* `alarm-on`: every problem is gone: the alarm works again;
* `quiet`: a daemon that used to report every day has been silent for
  `[hook] quiet_after` (the quiet watch).

Pure values with a JSON round trip (the state database keeps the open
problems and the notices not yet delivered), and the context the notice
templates render (templates/notice*.j2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Kind = Literal["alarm-off", "alarm-on", "quiet"]
KINDS: tuple[Kind, ...] = ("alarm-off", "alarm-on", "quiet")


@dataclass(frozen=True)
class Problem:
    """One reason refusals no longer reach the daemon, and what fixes it.

    `key` is its identity: the same problem has the same key after unrelated
    edits and restarts (it never holds a line number), so it is notified once."""

    key: str
    kind: str  # no_hook, hook_line, outdated, shadowed, broken_table, unreadable, unlinked, canary
    path: str  # the file it is about (a table, a program)
    line: int  # its line in `path` (0: none)
    message: str
    fix: str
    since: float = 0.0  # when it was first seen (the alarm book sets it)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}" if self.line else self.path

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        """From `as_dict` (TypeError, ValueError when it is not what we wrote)."""
        return cls(
            key=str(data["key"]),
            kind=str(data["kind"]),
            path=str(data["path"]),
            line=int(data["line"]),
            message=str(data["message"]),
            fix=str(data["fix"]),
            since=float(data.get("since", 0.0)),
        )


@dataclass(frozen=True)
class Quiet:
    """A daemon that used to report refusals every day and has stopped."""

    daemon: str
    last_seen: float  # its last refusal
    average: float  # refusals a day over the 7 days up to its last one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quiet:
        return cls(str(data["daemon"]), float(data["last_seen"]), float(data["average"]))


@dataclass(frozen=True)
class Notice:
    """One notice: its kind, what it is about, for which host, when."""

    kind: Kind
    host: str
    created: float
    # alarm-off: the new problems; alarm-on: the fixed ones.
    problems: tuple[Problem, ...] = ()
    # alarm-off: problems notified before and still open (said again, for the whole view).
    still_open: tuple[Problem, ...] = ()
    quiet: Quiet | None = None
    id: str = field(default="")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown notice kind {self.kind!r}")
        if not self.id:
            object.__setattr__(self, "id", notice_id(self))

    def to_json(self) -> str:
        data = {
            "kind": self.kind,
            "host": self.host,
            "created": self.created,
            "problems": [p.as_dict() for p in self.problems],
            "still_open": [p.as_dict() for p in self.still_open],
            "quiet": self.quiet.as_dict() if self.quiet else None,
            "id": self.id,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Notice:
        """From `to_json` (ValueError, TypeError, KeyError when it is not what we wrote)."""
        data = json.loads(text)
        quiet = data.get("quiet")
        return cls(
            kind=data["kind"],
            host=str(data["host"]),
            created=float(data["created"]),
            problems=tuple(Problem.from_dict(p) for p in data.get("problems", ())),
            still_open=tuple(Problem.from_dict(p) for p in data.get("still_open", ())),
            quiet=Quiet.from_dict(quiet) if quiet else None,
            id=str(data.get("id", "")),
        )


def notice_id(notice: Notice) -> str:
    """Stable: the same notice always gets the same Message-ID (a resend is recognisable)."""
    h = hashlib.sha256(f"{notice.kind}\0{notice.host}\0{notice.created!r}".encode())
    for problem in notice.problems:
        h.update(problem.key.encode("utf-8", "surrogatepass") + b"\0")
    if notice.quiet is not None:
        h.update(notice.quiet.daemon.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def with_since(problem: Problem, since: float) -> Problem:
    return replace(problem, since=since)


# -- what the templates see ---------------------------------------------------------------

HEADLINES: dict[Kind, str] = {
    "alarm-off": "the alarm is OFF",
    "alarm-on": "the alarm is on again",
    "quiet": "a daemon went quiet",
}


def subject_problem(notice: Notice) -> str:
    """What the subject names: the (first) problem and its file, or the quiet daemon."""
    if notice.quiet is not None:
        hours = max(0.0, notice.created - notice.quiet.last_seen) / 3600
        return f"{notice.quiet.daemon}: no refusals for {hours:.0f} h"
    if not notice.problems:
        return "every problem is fixed"
    first = notice.problems[0]
    more = f" (+{len(notice.problems) - 1} more)" if len(notice.problems) > 1 else ""
    if notice.kind == "alarm-on":
        return f"{first.path} fixed{more}"
    return f"{first.path}: {short(first)}{more}"


def short(problem: Problem) -> str:
    """A few words for the subject line: what is wrong (the file is named beside it)."""
    line = f"line {problem.line} " if problem.line else ""
    if problem.kind == "hook_line":
        # The linter's own first clause: "the file ends without a newline", ...
        return problem.message.split("; ")[0].split(": ")[0]
    return {
        "no_hook": "no rule runs the hook",
        "outdated": f"the hook {line}is outdated",
        "shadowed": f"{line}decides before the hook",
        "broken_table": f"{line}is broken, before the hook",
        "unreadable": "cannot be read",
        "unlinked": "no longer links libwrap",
        "canary": f"the canary's refusal by {line}never arrived",
    }.get(problem.kind, problem.kind)


def quiet_sentence(quiet: Quiet, now: float) -> str:
    """The quiet notice's sentence: "sshd: no refusals for 48 h; it averaged 310 a day:
    is the hook still in place?"."""
    hours = max(0.0, now - quiet.last_seen) / 3600
    average = f"{quiet.average:,.0f}" if quiet.average >= 10 else f"{quiet.average:,.1f}"
    return (
        f"{quiet.daemon}: no refusals for {hours:.0f} h; it averaged {average} a day: "
        "is the hook still in place?"
    )


def context(notice: Notice) -> dict[str, Any]:
    """Everything templates/notice*.j2 may use:

    kind ("alarm-off", "alarm-on", "quiet"), id, host, created, headline, subject
    (the problem and its file), problems and still_open (each a Problem: where,
    message, fix, since, kind, path, line), quiet (a Quiet or None) and
    quiet_sentence."""
    return {
        "kind": notice.kind,
        "id": notice.id,
        "host": notice.host,
        "created": notice.created,
        "headline": HEADLINES[notice.kind],
        "subject": subject_problem(notice),
        "problems": list(notice.problems),
        "still_open": list(notice.still_open),
        "quiet": notice.quiet,
        "quiet_sentence": quiet_sentence(notice.quiet, notice.created) if notice.quiet else "",
    }
