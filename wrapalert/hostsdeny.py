"""The hosts.deny line that hands refused connections to wrapalert.

libwrap runs the text after `spawn` with `/bin/sh -c` after its own escapes:
`\\:` is a literal colon (a bare `:` would end the option) and `%%` a literal
percent (a bare `%` starts an expansion). Paths are shell-quoted first.
Expansions (%d, %a, ...) are safe in the shell: libwrap replaces every
unsafe byte in them with `_`.

Three forms, one `( ... ) &` each (README, "The hosts.deny line"):

* durable (the default): `timeout 0.1 logger --socket-errors=on ... || python3 -I -S
  notify.py ... wait=0`. Both halves carry `i=$$`, the pid of the shell libwrap
  runs (in the `( )` subshell `$$` is still that shell's): when `timeout` kills a
  logger that had already sent, the client sends the same refusal again, and the
  daemon drops the copy by that identity (daemon/twins.py). logger sends at C
  speed while the daemon reads; it exits 1 when the socket is missing or nobody is
  bound to it, and `timeout` kills it when it blocks on a full queue (logger's
  socket is blocking and it has no timeout of its own), so in both cases the
  Python client runs and spools. `wait=0`: logger already waited for the queue,
  the client spools at once. Worst case a hook lives LOGGER_WAIT plus the
  client's start and one spool write.
* client: the Python client alone (a spool, no logger).
* logger: logger alone, bounded by LOGGER_ALONE_WAIT; no spool, so an event is lost
  when the socket is missing or its queue stays full.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wrapalert import notify

Form = Literal["durable", "client", "logger"]
MAX_LINE = 2046  # bytes; with its newline libwrap takes at most 2047 (checked by experiment)
# Expansions the client forwards: wire key -> libwrap %-expansion. %A, %r and %R
# (server address, client port and server port: Debian's libwrap has the ports) name
# the refused connection, which the daemon then looks up in the kernel's TCP table:
# only a source that completed a handshake can be banned (daemon/witness.py).
EXPANSIONS = (
    ("d", "%d"),
    ("p", "%p"),
    ("c", "%c"),
    ("a", "%a"),
    ("n", "%n"),
    ("s", "%s"),
    ("A", "%A"),
    ("r", "%r"),
    ("R", "%R"),
)
# One refusal's identity in the durable line: the hook shell's pid (see the docstring).
HOOK_ID = "i=$$"
LOGGER = "/usr/bin/logger"
TIMEOUT = "/usr/bin/timeout"  # coreutils (Essential): bounds logger's blocking send
# Seconds logger may run before timeout ends it. A reading daemon drains the queue in
# microseconds and logger starts in ~2 ms, so only a stalled daemon, or a starved CPU,
# hits this; then the client runs (and spools). Alone, logger has no fallback: its
# bound only stops blocked loggers piling up, so it is longer (at 50 ms, a loaded
# machine lost 1 event in 60 to a logger killed while starting: bench/hook_cost.py).
LOGGER_WAIT = "0.1"
LOGGER_ALONE_WAIT = "0.2"
LOGGER_TAG = "wrapalert"  # the syslog tag the daemon's parser expects (wire.py)
_DAEMON_LIST = re.compile(r"[A-Za-z0-9_.@+/-]+([ \t]*,[ \t]*[A-Za-z0-9_.@+/-]+)*")


def escape(text: str) -> str:
    """Shell-quote `text`, then apply libwrap's option escapes."""
    return shlex.quote(text).replace("%", "%%").replace(":", "\\:")


def _fields(*, ident: bool, hook_id: bool = False) -> list[str]:
    words = [f"{key}={expansion}" for key, expansion in EXPANSIONS]
    if hook_id:
        words.append(HOOK_ID)
    if ident:
        # %u makes libwrap ask the client's identd first: up to 10 s, before the fork.
        words.append("u=%u")
    return words


def _entry(daemons: str, words: list[str]) -> str:
    if daemons != "ALL" and not _DAEMON_LIST.fullmatch(daemons):
        raise ValueError(f"bad daemon list {daemons!r}: use names separated by commas, or ALL")
    line = f"{daemons} : ALL : spawn ({' '.join(words)}) &"
    if len(line.encode()) > MAX_LINE:
        raise ValueError(f"the line would be {len(line.encode())} bytes; libwrap allows {MAX_LINE}")
    return line


def logger_words(
    logger: str, socket: Path, *, ident: bool, wait: str = LOGGER_WAIT, hook_id: bool = False
) -> list[str]:
    """util-linux logger sending the event as one syslog datagram, bounded by timeout."""
    words = [TIMEOUT, wait, escape(logger), "--socket-errors=on"]
    words += ["-d", "-u", escape(str(socket)), "-t", LOGGER_TAG, "-p", "authpriv.notice"]
    return [*words, "--", "WA1", *_fields(ident=ident, hook_id=hook_id)]


def client_words(
    python: str,
    client: Path,
    *,
    ident: bool,
    socket: Path | None,
    spool: Path | None,
    settings: tuple[str, ...] = (),
    hook_id: bool = False,
) -> list[str]:
    """The Python client; socket= and spool= only where they differ from its defaults."""
    fields = _fields(ident=ident, hook_id=hook_id)
    words = [escape(python), "-I", "-S", escape(str(client)), *fields]
    if socket is not None and str(socket) != notify.SOCKET:
        words.append(escape(f"socket={socket}"))
    if spool is not None and str(spool) != notify.SPOOL:
        words.append(escape(f"spool={spool}"))
    return words + list(settings)


def logger_line(logger: str, socket: Path, *, daemons: str = "ALL", ident: bool = False) -> str:
    """The logger-only form: C speed, no spool (see the module docstring)."""
    return _entry(daemons, logger_words(logger, socket, ident=ident, wait=LOGGER_ALONE_WAIT))


def spawn_line(
    python: str,
    client: Path,
    *,
    daemons: str = "ALL",
    ident: bool = False,
    socket: Path | None = None,
    spool: Path | None = None,
) -> str:
    """The client-only form: one complete hosts.deny entry, without the newline."""
    words = client_words(python, client, ident=ident, socket=socket, spool=spool)
    return _entry(daemons, words)


def durable_line(
    python: str,
    client: Path,
    *,
    logger: str = LOGGER,
    daemons: str = "ALL",
    ident: bool = False,
    socket: Path,
    spool: Path | None = None,
) -> str:
    """The default form: logger, and the client (which spools) when logger fails."""
    first = logger_words(logger, socket, ident=ident, hook_id=True)
    fallback = client_words(
        python, client, ident=ident, socket=socket, spool=spool, settings=("wait=0",), hook_id=True
    )
    return _entry(daemons, [*first, "||", *fallback])


def line(
    form: Form,
    python: str,
    *,
    socket: Path,
    spool: Path,
    daemons: str = "ALL",
    ident: bool = False,
    logger: str = LOGGER,
    client: Path | None = None,
) -> str:
    """The line in one of its forms for the daemon at `socket` with its spool at `spool`
    (`client`: the Python client alone; the client module is this installation's unless
    `client` names another)."""
    client = client or Path(notify.__file__).resolve()
    if form == "logger":
        return logger_line(logger, socket, daemons=daemons, ident=ident)
    if form == "durable":
        return durable_line(
            python, client, logger=logger, daemons=daemons, ident=ident, socket=socket, spool=spool
        )
    return spawn_line(python, client, daemons=daemons, ident=ident, socket=socket, spool=spool)


def default_form() -> Form:
    """The line `hosts-deny-line` prints by default, where this host has logger and
    timeout; else the Python client alone (it needs neither)."""
    return "durable" if all(Path(t).exists() for t in (LOGGER, TIMEOUT)) else "client"


@dataclass(frozen=True)
class Install:
    """What an installation's line names: the interpreter and client the hook runs, the
    daemon's socket and spool. `line` prints its entry in any form (`wrapalert
    hosts-deny-line`); the linter compares a table's line with it (checkhosts)."""

    python: str
    client: Path
    socket: Path
    spool: Path

    @classmethod
    def here(cls, python: str, socket: Path, spool: Path) -> Install:
        """This installation's: its own client (notify.py where this package is)."""
        return cls(python, Path(notify.__file__).resolve(), socket, spool)

    def line(
        self,
        daemons: str = "ALL",
        ident: bool = False,  # noqa: FBT001, FBT002 - checkhosts.Installation's callback shape
        form: Form = "client",
        logger: str = LOGGER,
    ) -> str:
        """This installation's entry in `form` (`client`: the Python client alone)."""
        return line(
            form,
            self.python,
            socket=self.socket,
            spool=self.spool,
            daemons=daemons,
            ident=ident,
            logger=logger,
            client=self.client,
        )


def line_command(config_path: Path | None) -> str:
    """`wrapalert hosts-deny-line`, with -c FILE when another config file is in use."""
    command = "wrapalert hosts-deny-line"
    return command if config_path is None else f"{command} -c {config_path}"
