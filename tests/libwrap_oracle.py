"""Ask the real libwrap (hosts_ctl) for a batch of verdicts, each with its own tables.

Run as a script, in a process of its own: options such as umask, nice or setenv
change the process that calls hosts_ctl, and libwrap is not thread-safe. Reads
one JSON array of cases on stdin, each {"allow", "deny" (latin-1 text, one char
per byte), "daemon", "addr", "name", "user"}, and prints one JSON array of
booleans: True where libwrap allows.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from wrapalert.libwrap import LibWrap


def main() -> None:
    cases = json.load(sys.stdin)
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="wa-oracle-") as tmp:
        allow, deny = Path(tmp, "hosts.allow"), Path(tmp, "hosts.deny")
        wrap = LibWrap(allow, deny)
        for case in cases:
            allow.write_bytes(case["allow"].encode("latin-1"))
            deny.write_bytes(case["deny"].encode("latin-1"))
            verdicts.append(wrap.allowed(case["daemon"], case["addr"], case["name"], case["user"]))
    json.dump(verdicts, sys.stdout)


if __name__ == "__main__":
    main()
