"""Durable state in SQLite (WAL) under `state_dir`: what a restart must not lose.

Tables: the groups (counts, detail, timers), the outbox of digests per sink,
the notification log, the spool files already counted, silences, the
daemon's counters, and the nftables sink's bans with their log and history
(every ban's time, for repeat offenders). Changes are
staged in memory and written by `commit` in one transaction, so a group's
reset and the digest that reported it land together or not at all (group
commit: the daemon commits every 100 ms, and at once when a digest is made
or delivered).

Failure behaviour, written down:
* a database that cannot be read as SQLite is moved aside (never emptied in
  place) with an error naming both paths, and a new one is started;
* a database from a newer wrapalert is refused (`StateError`): moving it
  aside would lose what that version wrote;
* a state_dir that cannot be written (missing, read-only, full) leaves the
  daemon running in memory: `error` says why, every commit retries, and the
  staged changes are kept for it: the groups' (bounded by max_groups) and
  the outbox's, which grow with the digests made while the outage lasts
  (few: the mail cap bounds them).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from wrapalert.clock import SYSTEM
from wrapalert.daemon.twins import Saved
from wrapalert.model import BanNote, Digest, digest_from_json, digest_to_json

log = structlog.get_logger()

DB_NAME = "state.db"
SCHEMA_VERSION = 3

# Index i holds the statements that take a database from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE groups (key TEXT PRIMARY KEY, state TEXT NOT NULL)",
        """CREATE TABLE outbox (
            sink TEXT NOT NULL, digest_id TEXT NOT NULL, digest TEXT NOT NULL,
            created REAL NOT NULL, failed_error TEXT,
            PRIMARY KEY (sink, digest_id))""",
        """CREATE TABLE notification_log (
            sink TEXT NOT NULL, digest_id TEXT NOT NULL, delivered REAL NOT NULL,
            events INTEGER NOT NULL, PRIMARY KEY (sink, digest_id))""",
        "CREATE TABLE spool_seen (name TEXT PRIMARY KEY)",
        """CREATE TABLE silences (
            id INTEGER PRIMARY KEY, matchers TEXT NOT NULL, created REAL NOT NULL,
            expires REAL NOT NULL, comment TEXT NOT NULL DEFAULT '')""",
    ],
    [  # 2: the nftables sink's bans (daemon/bans.py), and what happened to them
        """CREATE TABLE bans (
            target TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL,
            until REAL NOT NULL, dry_run INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE ban_log (
            id INTEGER PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL,
            target TEXT NOT NULL, reason TEXT NOT NULL, until REAL)""",
    ],
    [  # 3: repeat offenders: which of its target's bans a ban is, and every ban's time
        "ALTER TABLE bans ADD COLUMN nth INTEGER NOT NULL DEFAULT 1",
        "CREATE TABLE ban_history (target TEXT NOT NULL, since REAL NOT NULL)",
        "CREATE INDEX ban_history_since ON ban_history (since)",
    ],
]
NOTIFICATION_LOG_KEEP = 10000  # rows; older ones are pruned (they only explain the past)
BAN_LOG_KEEP = 10000  # rows of ban_log, likewise


class StateError(Exception):
    """The state cannot be used and must not be replaced: the daemon should not start."""


@dataclass
class OutboxRow:
    sink: str
    digest: Digest
    failed_error: str | None


@dataclass(frozen=True)
class SilenceRow:
    """A silence as the database keeps it (daemon/silences.py parses its matchers)."""

    id: int
    matchers: tuple[str, ...]
    created: float
    expires: float
    comment: str


@dataclass(frozen=True)
class BanRow:
    """A ban as the database keeps it (daemon/bans.py)."""

    target: str
    reason: str
    since: float
    until: float
    dry_run: bool
    nth: int = 1


@dataclass(frozen=True)
class BanLogRow:
    """One line of the ban log: what happened to a target, when."""

    time: float
    action: str
    target: str
    reason: str
    until: float | None


@dataclass
class Snapshot:
    """Everything `load` found: the daemon's starting point."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    spool_seen: set[str] = field(default_factory=set)


class Store:
    """The one owner of state.db. Not thread-safe: used from the event loop only."""

    def __init__(self, state_dir: Path, now: Callable[[], float] = SYSTEM.now) -> None:
        self.path = state_dir / DB_NAME
        self.now = now
        self.db: sqlite3.Connection | None = None
        self.error: str | None = None
        self.moved_aside: Path | None = None
        self._groups: dict[str, str | None] = {}
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._meta: dict[str, str] = {}  # meta rows to write at the next commit
        self.commits = 0

    # -- opening ---------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; on failure stay in memory and say why."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = self._connect()
        except (OSError, sqlite3.OperationalError) as exc:
            self._fail(exc)  # cannot open, read-only, full, I/O: not the file's fault
            return
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "malformed", quick_check: the content is damaged.
            try:
                self._move_aside(exc)
                self.db = self._connect()
            except (OSError, sqlite3.Error) as again:
                self._fail(again)
                return
        self._recovered()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a crash of the process loses nothing committed.
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema version {version}, newer than this wrapalert's "
                f"{SCHEMA_VERSION}: run the newer version, or move the file away to start afresh"
            )
        for step in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[step]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
            log.info("state_migrated", path=str(self.path), version=step + 1)

    def _move_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(self.now()))
        target = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{target}{suffix}"))
        self.moved_aside = target
        log.error(
            "state_corrupt_moved_aside", path=str(self.path), moved_to=str(target), error=str(exc)
        )

    def _fail(self, exc: BaseException) -> None:
        message = f"{self.path}: {exc}"
        if self.error != message:
            log.error("state_unavailable", error=message, running="in memory")
        self.error = message
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def _recovered(self) -> None:
        if self.error is not None:
            log.info("state_recovered", path=str(self.path))
        self.error = None

    def health(self) -> dict[str, object]:
        """The `state` object of `wrapalert status`."""
        return {
            "path": str(self.path),
            "ok": self.error is None,
            "error": self.error,
            "moved_aside": str(self.moved_aside) if self.moved_aside else None,
            "commits": self.commits,
        }

    # -- reading ---------------------------------------------------------

    def load(self) -> Snapshot:
        """What the last run left: groups, outbox, counters, spool files already counted."""
        snap = Snapshot()
        if self.db is None:
            return snap
        db = self.db
        snap.groups = [json.loads(s) for (s,) in db.execute("SELECT state FROM groups")]
        for sink, text, error in db.execute(
            "SELECT sink, digest, failed_error FROM outbox ORDER BY created, digest_id"
        ):
            snap.outbox.append(OutboxRow(sink, digest_from_json(text), error))
        row = db.execute("SELECT value FROM meta WHERE key = 'counters'").fetchone()
        snap.counters = json.loads(row[0]) if row else {}
        snap.spool_seen = {name for (name,) in db.execute("SELECT name FROM spool_seen")}
        return snap

    # -- staging ---------------------------------------------------------

    def stage_group(self, key: tuple[str, ...], state: dict[str, Any] | None) -> None:
        """Save (or with None, delete) one group at the next commit."""
        self._groups[json.dumps(key)] = None if state is None else json.dumps(state)

    def stage_counters(self, counters: dict[str, Any]) -> None:
        self._meta["counters"] = json.dumps(counters, sort_keys=True)

    def stage_ban_notes(self, notes: list[BanNote], more: int) -> None:
        """What happened to bans since the last digest, for the next one: taken in the
        same commit as the digest that carries them, so a restart loses none."""
        saved = [note.as_tuple() for note in notes]
        self._meta["ban_notes"] = json.dumps({"notes": saved, "more": more})

    def stage_twins(self, saved: list[Saved]) -> None:
        """The trusted refusals' identities whose second copy may still come (daemon/
        twins.py), committed with the events they belong to."""
        self._meta["twins"] = json.dumps([[*key, at] for key, at in saved])

    def twins(self) -> list[Saved]:
        """What `stage_twins` saved last; nothing if the row is not what we wrote."""
        if self.db is None:
            return []
        row = self.db.execute("SELECT value FROM meta WHERE key = 'twins'").fetchone()
        out: list[Saved] = []
        try:
            for uid, hook, pid, daemon, addr, port, at in json.loads(row[0]) if row else []:
                who = None if uid is None else int(uid)
                key = (who, str(hook), str(pid), str(daemon), str(addr), str(port))
                out.append((key, float(at)))
        except (TypeError, ValueError):
            return []  # a damaged row costs the copies' recognition after a restart, no more
        return out

    def stage_sightings(self, saved: dict[str, Any]) -> None:
        """What the daemon saw of recent sources (daemon/sightings.py), at a clean stop."""
        self._meta["sightings"] = json.dumps(saved, separators=(",", ":"))

    def sightings(self) -> object | None:
        """What `stage_sightings` saved last, as JSON values; None if nothing or unreadable."""
        if self.db is None:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key = 'sightings'").fetchone()
        try:
            return json.loads(row[0]) if row else None
        except ValueError:
            return None

    def stage_ban_tables(self, tables: list[str]) -> None:
        """The nftables tables the daemon keeps (an earlier one is removed once a new
        `table` holds the bans, also after a restart)."""
        self._meta["ban_tables"] = json.dumps(tables)

    def stage_value(self, key: str, data: object) -> None:
        """A small document of a book of its own (the alarm, the notices not yet delivered,
        the activity per daemon...), as JSON in `meta` under `key`, at the next commit."""
        self._meta[key] = json.dumps(data, separators=(",", ":"))

    def value(self, key: str) -> Any:  # noqa: ANN401 - JSON, checked by its owner
        """What `stage_value` saved under `key` (the staged one first); None when there is
        none or it is not JSON (its owner checks the shape)."""
        text = self._meta.get(key)
        if text is None and self.db is not None:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            text = row[0] if row else None
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def stage_fleet_exceptions(self, exceptions: dict[str, float]) -> None:
        """Fleet bans lifted here by hand, each with the end of the fleet ban it lifted
        (daemon/fleetbook.py): not followed again while that lasts, also after a restart."""
        self._meta["fleet_exceptions"] = json.dumps(exceptions)

    def fleet_exceptions(self) -> list[tuple[str, float]]:
        """What `stage_fleet_exceptions` saved last; nothing if the row is not what we wrote."""
        if self.db is None:
            return []
        row = self.db.execute("SELECT value FROM meta WHERE key = 'fleet_exceptions'").fetchone()
        try:
            saved = json.loads(row[0]) if row else {}
            return [(str(target), float(end)) for target, end in saved.items()]
        except (TypeError, ValueError, AttributeError):
            return []  # a damaged row: those fleet bans are followed again, no more

    def stage_enqueue(self, sink: str, digest: Digest) -> None:
        self._ops.append(
            (
                "INSERT OR REPLACE INTO outbox (sink, digest_id, digest, created) VALUES (?,?,?,?)",
                (sink, digest.id, digest_to_json(digest), self.now()),
            )
        )

    def stage_replace(self, sink: str, old: list[str], digest: Digest) -> None:
        """Digests merged into one: the merged one replaces them, atomically."""
        for digest_id in old:
            self._ops.append(
                ("DELETE FROM outbox WHERE sink = ? AND digest_id = ?", (sink, digest_id))
            )
        self.stage_enqueue(sink, digest)

    def stage_delivered(self, sink: str, digest: Digest) -> None:
        self._ops.append(("DELETE FROM outbox WHERE sink = ? AND digest_id = ?", (sink, digest.id)))
        self._ops.append(
            (
                "INSERT OR REPLACE INTO notification_log VALUES (?,?,?,?)",
                (sink, digest.id, self.now(), digest.events),
            )
        )

    def stage_failed(self, sink: str, digest: Digest, error: str) -> None:
        self._ops.append(
            (
                "UPDATE outbox SET failed_error = ? WHERE sink = ? AND digest_id = ?",
                (error, sink, digest.id),
            )
        )

    def stage_retry_failed(self) -> None:
        self._ops.append(("UPDATE outbox SET failed_error = NULL", ()))

    def stage_spool_seen(self, names: list[str]) -> None:
        self._ops.extend(("INSERT OR IGNORE INTO spool_seen VALUES (?)", (n,)) for n in names)

    def stage_spool_gone(self, names: list[str]) -> None:
        self._ops.extend(("DELETE FROM spool_seen WHERE name = ?", (n,)) for n in names)

    @property
    def staged(self) -> bool:
        return bool(self._groups or self._ops or self._meta)

    # -- writing ---------------------------------------------------------

    def commit(self) -> bool:
        """Write everything staged in one transaction; False (and kept staged) on failure."""
        if not self.staged:
            return self.db is not None
        if self.db is None:
            try:
                self.open()
            except StateError as exc:  # replaced under us by a newer version's database
                self._fail(exc)
            if self.db is None:
                return False
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            for key, state in self._groups.items():
                if state is None:
                    db.execute("DELETE FROM groups WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?)", (key, state))
            for sql, args in self._ops:
                db.execute(sql, args)
            for key, value in self._meta.items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._fail(exc)
            return False
        self._groups.clear()
        self._ops.clear()
        self._meta.clear()
        self.commits += 1
        self._recovered()
        return True

    def prune(self) -> None:
        """Keep the notification log bounded (it explains the past; the outbox is the promise)."""
        if self.db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.execute(
                "DELETE FROM notification_log WHERE rowid NOT IN "
                "(SELECT rowid FROM notification_log ORDER BY delivered DESC LIMIT ?)",
                (NOTIFICATION_LOG_KEEP,),
            )
            self.db.execute(
                "DELETE FROM ban_log WHERE id NOT IN "
                "(SELECT id FROM ban_log ORDER BY id DESC LIMIT ?)",
                (BAN_LOG_KEEP,),
            )

    # -- silences: written at once, each is an operator's explicit request -------------

    def add_silence(
        self, matchers: list[str], created: float, expires: float, comment: str
    ) -> int | None:
        """Store a silence; its id, or None when the state is unavailable."""
        if self.db is None:
            return None
        try:
            cur = self.db.execute(
                "INSERT INTO silences (matchers, created, expires, comment) VALUES (?,?,?,?)",
                (json.dumps(matchers), created, expires, comment),
            )
        except sqlite3.Error as exc:
            self._fail(exc)
            return None
        return cur.lastrowid

    def silences(self, since: float) -> list[SilenceRow]:
        """Silences that expire after `since`, oldest first."""
        if self.db is None:
            return []
        rows = self.db.execute(
            "SELECT id, matchers, created, expires, comment FROM silences WHERE expires > ? "
            "ORDER BY id",
            (since,),
        )
        found = []
        for i, m, c, e, t in rows:
            try:
                matchers = json.loads(m)
            except (TypeError, ValueError):
                matchers = None
            if not (isinstance(matchers, list) and all(isinstance(x, str) for x in matchers)):
                # A damaged row costs that silence (said, once per start), never the start.
                log.error("silence_unreadable", id=i, hint="wrapalert silence list; add it again")
                continue
            found.append(SilenceRow(i, tuple(matchers), c, e, str(t)))
        return found

    def expire_silence(self, silence_id: int, now: float) -> bool:
        if self.db is None:
            return False
        try:
            cur = self.db.execute(
                "UPDATE silences SET expires = ? WHERE id = ? AND expires > ?",
                (now, silence_id, now),
            )
        except sqlite3.Error as exc:
            self._fail(exc)
            return False
        return cur.rowcount > 0

    # -- bans: staged like groups, committed with the next (group) commit ----------------

    def stage_ban(
        self, target: str, reason: str, since: float, until: float, *, dry_run: bool, nth: int = 1
    ) -> None:
        self._ops.append(
            (
                (
                    "INSERT OR REPLACE INTO bans (target, reason, since, until, dry_run, nth) "
                    "VALUES (?,?,?,?,?,?)"
                ),
                (target, reason, since, until, int(dry_run), nth),
            )
        )

    def stage_ban_history(self, target: str, since: float) -> None:
        """One more ban of `target` (daemon/banhistory.py)."""
        self._ops.append(("INSERT INTO ban_history VALUES (?,?)", (target, since)))

    def stage_ban_history_pruned(self, horizon: float, keep: int) -> None:
        """Forget bans made before `horizon`, and all but the newest `keep` rows."""
        self._ops.append(("DELETE FROM ban_history WHERE since < ?", (horizon,)))
        self._ops.append(
            (
                (
                    "DELETE FROM ban_history WHERE rowid NOT IN "
                    "(SELECT rowid FROM ban_history ORDER BY since DESC LIMIT ?)"
                ),
                (keep,),
            )
        )

    def ban_history(self) -> list[tuple[str, float]]:
        """Every remembered ban: (target, since)."""
        if self.db is None:
            return []
        rows = self.db.execute("SELECT target, since FROM ban_history")
        return [(str(t), float(s)) for t, s in rows]

    def stage_unban(self, target: str) -> None:
        self._ops.append(("DELETE FROM bans WHERE target = ?", (target,)))

    def stage_ban_log(
        self, when: float, action: str, target: str, reason: str, until: float | None
    ) -> None:
        self._ops.append(
            (
                "INSERT INTO ban_log (time, action, target, reason, until) VALUES (?,?,?,?,?)",
                (when, action, target, reason, until),
            )
        )

    def bans(self) -> list[BanRow]:
        """Every ban, expired ones too."""
        if self.db is None:
            return []
        rows = self.db.execute("SELECT target, reason, since, until, dry_run, nth FROM bans")
        return [BanRow(t, r, s, u, bool(d), int(n)) for t, r, s, u, d, n in rows]

    def ban_notes(self) -> tuple[list[BanNote], int]:
        """The ban notes no digest has carried yet (`stage_ban_notes`); none if unreadable."""
        if self.db is None:
            return [], 0
        row = self.db.execute("SELECT value FROM meta WHERE key = 'ban_notes'").fetchone()
        try:
            saved = json.loads(row[0]) if row else {}
            notes = [BanNote.from_list(values) for values in saved.get("notes", [])]
            return notes, int(saved.get("more", 0))
        except (TypeError, ValueError, AttributeError):
            return [], 0  # a damaged row costs a digest's Banned notes, nothing else

    def ban_tables(self) -> list[str]:
        """The tables `stage_ban_tables` recorded (the staged value first); none if unreadable."""
        staged = self._meta.get("ban_tables")
        if staged is None and self.db is not None:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'ban_tables'").fetchone()
            staged = row[0] if row else None
        try:
            tables = json.loads(staged) if staged else []
        except ValueError:
            return []
        return [t for t in tables if isinstance(t, str)] if isinstance(tables, list) else []

    def ban_log(self, limit: int = 100) -> list[BanLogRow]:
        """The latest ban_log rows, newest first."""
        if self.db is None:
            return []
        rows = self.db.execute(
            "SELECT time, action, target, reason, until FROM ban_log ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [BanLogRow(*row) for row in rows]

    def deliveries_since(self, sink: str, since: float) -> list[float]:
        """When `sink` delivered since `since`, oldest first: seeds the mail cap at start."""
        if self.db is None:
            return []
        rows = self.db.execute(
            "SELECT delivered FROM notification_log WHERE sink = ? AND delivered > ? "
            "ORDER BY delivered",
            (sink, since),
        )
        return [t for (t,) in rows]

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
