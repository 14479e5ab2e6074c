"""The hosts.deny line that hands refused connections to wrapalert.

libwrap runs the text after `spawn` with `/bin/sh -c` after its own escapes:
`\\:` is a literal colon (a bare `:` would end the option) and `%%` a literal
percent (a bare `%` starts an expansion). Paths are shell-quoted first.
Expansions (%d, %a, ...) are safe in the shell: libwrap replaces every
unsafe byte in them with `_`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from wrapalert import notify

MAX_LINE = 2046  # bytes; with its newline libwrap takes at most 2047 (checked by experiment)
# Expansions the client forwards: wire key -> libwrap %-expansion.
EXPANSIONS = (("d", "%d"), ("p", "%p"), ("c", "%c"), ("a", "%a"), ("n", "%n"), ("s", "%s"))
_DAEMON_LIST = re.compile(r"[A-Za-z0-9_.@+/-]+([ \t]*,[ \t]*[A-Za-z0-9_.@+/-]+)*")


def escape(text: str) -> str:
    """Shell-quote `text`, then apply libwrap's option escapes."""
    return shlex.quote(text).replace("%", "%%").replace(":", "\\:")


def _entry(daemons: str, words: list[str]) -> str:
    if daemons != "ALL" and not _DAEMON_LIST.fullmatch(daemons):
        raise ValueError(f"bad daemon list {daemons!r}: use names separated by commas, or ALL")
    line = f"{daemons} : ALL : spawn ({' '.join(words)}) &"
    if len(line.encode()) > MAX_LINE:
        raise ValueError(f"the line would be {len(line.encode())} bytes; libwrap allows {MAX_LINE}")
    return line


def logger_line(logger: str, socket: Path, *, daemons: str = "ALL", ident: bool = False) -> str:
    """The C-speed variant: util-linux logger sends the event as one syslog datagram.

    About five times cheaper to start than Python, but with no spool: if the socket
    does not exist (no daemon, and no systemd holding the socket) the event is lost,
    and a full queue makes logger wait. Meant for the socket-activated service.
    """
    words = [escape(logger), "-d", "-u", escape(str(socket)), "-t", "wrapalert"]
    words += ["-p", "authpriv.notice", "--", "WA1"]
    words += [f"{key}={expansion}" for key, expansion in EXPANSIONS]
    if ident:
        words.append("u=%u")
    return _entry(daemons, words)


def spawn_line(
    python: str,
    client: Path,
    *,
    daemons: str = "ALL",
    ident: bool = False,
    socket: Path | None = None,
    spool: Path | None = None,
) -> str:
    """One complete hosts.deny entry, without the newline."""
    words = [escape(python), "-I", "-S", escape(str(client))]
    words += [f"{key}={expansion}" for key, expansion in EXPANSIONS]
    if ident:
        # %u makes libwrap ask the client's identd first: up to 10 s, before the fork.
        words.append("u=%u")
    if socket is not None and str(socket) != notify.SOCKET:
        words.append(escape(f"socket={socket}"))
    if spool is not None and str(spool) != notify.SPOOL:
        words.append(escape(f"spool={spool}"))
    return _entry(daemons, words)
