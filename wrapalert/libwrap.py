"""Real libwrap through ctypes: ask it about a connection, with our own tables.

Used by `wrapalert simulate` and the end-to-end tests. libwrap runs the
matching rule's options itself, `spawn` included, with its real %-expansion
and character filter. It is not thread-safe: one `LibWrap` per process, used
from one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

SONAME = "libwrap.so.0"


class LibWrapMissingError(OSError):
    """libwrap0 is not installed."""


class LibWrap:
    """hosts_ctl() against hosts.allow/hosts.deny files of our choosing."""

    def __init__(self, allow: Path, deny: Path) -> None:
        name = ctypes.util.find_library("wrap") or SONAME
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as exc:
            raise LibWrapMissingError(
                f"cannot load {SONAME} ({exc}); install it with: apt-get install libwrap0"
            ) from exc
        self.lib.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
        self.lib.hosts_ctl.restype = ctypes.c_int
        # libwrap reads the globals on each call; the buffers must outlive us.
        self._tables = []
        for symbol, path in (("hosts_allow_table", allow), ("hosts_deny_table", deny)):
            buf = ctypes.create_string_buffer(str(path).encode())
            ctypes.c_void_p.in_dll(self.lib, symbol).value = ctypes.addressof(buf)
            self._tables.append(buf)

    def allowed(self, daemon: str, addr: str, name: str = "unknown", user: str = "unknown") -> bool:
        """What libwrap decides for `daemon` and a client at `addr` (running spawn options)."""
        result = self.lib.hosts_ctl(daemon.encode(), name.encode(), addr.encode(), user.encode())
        return bool(result)
