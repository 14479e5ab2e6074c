"""`wrapalert simulate`: refused connections through real libwrap and our own line.

The hosts.deny line goes into a private table that only this process's
libwrap reads: no root, no edits to /etc. Without libwrap0 installed, the
client is run directly with the arguments the spawn would have given it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from wrapalert import notify
from wrapalert.libwrap import LibWrap, LibWrapMissingError


def simulate(line: str, daemons: list[str], addrs: list[str], count: int) -> int:
    """Refuse count x daemons x addrs connections; 0 if libwrap refused them all."""
    total = count * len(daemons) * len(addrs)
    with tempfile.TemporaryDirectory(prefix="wrapalert-sim-") as tmp:
        allow, deny = Path(tmp, "hosts.allow"), Path(tmp, "hosts.deny")
        allow.write_text("")
        deny.write_text(line + "\n")
        try:
            wrap = LibWrap(allow, deny)
        except LibWrapMissingError as exc:
            print(f"{exc}\nCalling the client directly instead, as the spawn would.")
            return _direct(daemons, addrs, count, line)
        allowed = 0
        for daemon in daemons:
            for addr in addrs:
                for _ in range(count):
                    allowed += wrap.allowed(daemon, addr)
    refused = total - allowed
    print(
        f"libwrap refused {refused} of {total} connections "
        f"({', '.join(daemons)} from {', '.join(addrs)}); each ran the spawn hook."
    )
    return 0 if allowed == 0 else 1


def _direct(daemons: list[str], addrs: list[str], count: int, line: str) -> int:
    settings = [w for w in line.split() if w.startswith(("socket=", "spool="))]
    client = str(Path(notify.__file__).resolve())
    for daemon in daemons:
        for addr in addrs:
            for _ in range(count):
                argv = [
                    sys.executable,
                    "-I",
                    "-S",
                    client,
                    f"d={daemon}",
                    f"a={addr}",
                    f"c={addr}",
                    "n=unknown",
                    *settings,
                ]
                subprocess.run(argv, check=False, stdin=subprocess.DEVNULL)
    sent = count * len(daemons) * len(addrs)
    print(f"sent {sent} event{'s' if sent != 1 else ''} with the client.")
    return 0
