"""`hosts-deny-line --install` and `--uninstall`: our lines in hosts.deny and hosts.allow.

The edits are pure (bytes in, bytes and what changed out); `replace` writes
the result safely:

* atomically: a temporary file in the same directory, fsync, rename (a
  libwrap reading the table at that moment sees the old or the new one,
  never half of each), keeping the file's owner and mode; a symlinked table
  is edited where it points, so it stays a symlink;
* with a backup of the previous contents beside it (`FILE.wrapalert-bak`);
* only if nobody changed the file since it was read;
* always ending in a newline: a table whose last line has none makes libwrap
  refuse every client that reaches it.

Our hosts.deny line is any rule whose spawn runs wrapalert
(`checkhosts.runs_wrapalert`): an outdated one is replaced where it stands, a
second one removed, an identical one left alone. hosts.allow entries are
added once, under a comment that says who added them; `--uninstall` leaves
them (they only name who may connect).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapalert import hostsaccess
from wrapalert.checkhosts import runs_wrapalert
from wrapalert.hostsaccess import Decision, Endpoint, Request
from wrapalert.lockout import STRANGERS

BACKUP_SUFFIX = ".wrapalert-bak"
ALLOW_COMMENT = b"# added by wrapalert hosts-deny-line --install --allow\n"


class InstallError(Exception):
    """A table could not be read or written as needed; the message says which and why."""


@dataclass(frozen=True)
class Edit:
    """A table's new contents and what changed, one phrase each (empty: nothing)."""

    data: bytes
    changes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class _Rule:
    """A logical line: its physical lines' bytes (continuations included) and its text."""

    number: int  # first physical line, 1-based
    raw: bytes
    text: str


def _rules(data: bytes) -> list[_Rule]:
    rules: list[_Rule] = []
    physical = data.splitlines(keepends=True)
    i = 0
    while i < len(physical):
        start, parts = i, [physical[i]]
        while parts[-1].endswith(b"\\\n") and i + 1 < len(physical):
            i += 1
            parts.append(physical[i])
        i += 1
        raw = b"".join(parts)
        text = raw.replace(b"\\\n", b"").decode("latin-1").rstrip("\n")
        rules.append(_Rule(start + 1, raw, text))
    return rules


def _lines(data: bytes) -> int:
    return data.count(b"\n")


def _terminated(data: bytes, changes: list[str]) -> bytes:
    if data and not data.endswith(b"\n"):
        changes.append("added the missing newline at the end of the file")
        return data + b"\n"
    return data


def with_hook(data: bytes, line: str, *, ours: Callable[[str], bool] = runs_wrapalert) -> Edit:
    """hosts.deny with exactly one wrapalert line, `line`."""
    new = line.encode() + b"\n"
    rules = _rules(data)
    found = [r for r in rules if ours(r.text)]
    changes: list[str] = []
    if not found:
        kept = _terminated(data, changes)
        changes.append(f"added the wrapalert line as line {_lines(kept) + 1}")
        return Edit(kept + new, tuple(changes))
    out: list[bytes] = []
    for rule in rules:
        if rule is found[0]:
            if rule.raw.rstrip(b"\n") != new.rstrip(b"\n"):
                changes.append(f"replaced the outdated wrapalert line {rule.number}")
            out.append(new)
        elif rule in found:
            changes.append(f"removed a second wrapalert line, line {rule.number}")
        else:
            out.append(rule.raw)
    result = _terminated(b"".join(out), changes)
    return Edit(result, tuple(changes))


def without_hook(data: bytes, *, ours: Callable[[str], bool] = runs_wrapalert) -> Edit:
    """hosts.deny without any wrapalert line."""
    rules = _rules(data)
    gone = [r.number for r in rules if ours(r.text)]
    if not gone:
        return Edit(data, ())
    kept = b"".join(r.raw for r in rules if not ours(r.text))
    changes = [f"removed the wrapalert line {n}" for n in gone]
    return Edit(_terminated(kept, changes), tuple(changes))


def with_allowed(data: bytes, lines: list[str]) -> Edit:
    """hosts.allow with each of `lines` (added once, at the end, under our comment)."""
    present = {" ".join(r.text.split()) for r in _rules(data)}
    missing = [line for line in dict.fromkeys(lines) if " ".join(line.split()) not in present]
    if not missing:
        return Edit(data, ())
    changes: list[str] = []
    out = _terminated(data, changes) + ALLOW_COMMENT
    for line in missing:
        changes.append(f"added '{line}' as line {_lines(out) + 1}")
        out += line.encode() + b"\n"
    return Edit(out, tuple(changes))


def shadowing(deny: bytes, daemon: str) -> Decision | None:
    """The earlier hosts.deny rule that refuses a stranger to `daemon` before our line
    can (the hook then never runs for it), or None."""
    ours = find(deny)
    decision = hostsaccess.decide(b"", deny, Request(daemon, Endpoint(STRANGERS[0])))
    if ours is None or decision.table != "deny" or decision.line >= ours:
        return None
    return decision


def find(data: bytes, *, ours: Callable[[str], bool] = runs_wrapalert) -> int | None:
    """The line number of the (first) wrapalert line, or None."""
    return next((r.number for r in _rules(data) if ours(r.text)), None)


# --- the file system -----------------------------------------------------------------------


def read(path: Path) -> bytes | None:
    """A table's bytes; None when it does not exist (libwrap reads that as empty)."""
    try:
        return path.resolve().read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"{path}: cannot read it: {exc.strerror}") from None


def replace(path: Path, data: bytes, *, before: bytes | None) -> Path | None:
    """Write `data` to the table at `path` safely (see the module docstring), if it still
    holds `before` (None: it did not exist). Returns the backup's path, if one was made."""
    target = path.resolve()
    try:
        st = target.stat()
    except FileNotFoundError:
        st = None
    backup = None
    if before is not None and st is not None:
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        _write(backup, before, st)
    if read(path) != before:
        raise InstallError(f"{path} changed while wrapalert was editing it: nothing written there")
    _write(target, data, st)
    return backup


def _write(target: Path, data: bytes, like: os.stat_result | None) -> None:
    """Atomically put `data` at `target`, with the owner and mode of `like` (else 0644)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.wrapalert-")
    except OSError as exc:
        raise InstallError(f"{target}: cannot write beside it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if like is not None and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), like.st_uid, like.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(like.st_mode) if like else 0o644)
            os.fsync(out.fileno())
        Path(tmp).replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise InstallError(f"{target}: cannot write it: {exc.strerror}") from None
    _sync_dir(target.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
