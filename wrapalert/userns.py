"""The uids the daemon can tell apart, from its user namespace's /proc/self/uid_map.

The packaged unit sets systemd's PrivateUsers=yes: the daemon runs in a user
namespace that maps root and the service's own user to themselves and every
other uid to the overflow uid, 65534. The kernel then reports every other
sender's credentials (SO_PASSCRED) and owner of every other user's file as
65534. Root, the default trusted uid, is unaffected; any other trusted uid
would silently read as untrusted 65534, so the daemon refuses such a config
and names the fix instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

UID_MAP = Path("/proc/self/uid_map")
OVERFLOW_UID = 65534


def ranges(uid_map: Path | None = None) -> list[tuple[int, int]] | None:
    """The namespace's visible uids as [start, end) ranges, or None if it cannot be read
    (no /proc, an old kernel: the daemon then sees uids as they are)."""
    try:
        text = (uid_map or UID_MAP).read_text()
    except OSError:
        return None
    seen = []
    for line in text.splitlines():
        inside, _outside, count = (int(word) for word in line.split())
        seen.append((inside, inside + count))
    return seen


def unmapped(uids: Iterable[int], uid_map: Path | None = None) -> list[int]:
    """Those of `uids` this namespace cannot see: their credentials read as 65534."""
    seen = ranges(uid_map)
    if seen is None:
        return []
    # Not seen_as(u) != u: a trusted 65534 would pass, and every hidden user reads as it.
    return sorted({u for u in uids if not any(start <= u < end for start, end in seen)})


def seen_as(uid: int, seen: list[tuple[int, int]] | None) -> int:
    """`uid` as this namespace (its `ranges`) shows it: itself, or the overflow uid."""
    if seen is None or any(start <= uid < end for start, end in seen):
        return uid
    return OVERFLOW_UID


def check_trusted(uids: Iterable[int], uid_map: Path | None = None) -> str | None:
    """Why `uids` cannot be trusted from here, or None when every one is visible."""
    hidden = unmapped(uids, uid_map)
    if not hidden:
        return None
    return (
        f"trusted_uids {hidden}: this daemon runs in a user namespace that maps only root "
        "and its own user (systemd's PrivateUsers=yes), so reports from "
        f"{'that uid' if len(hidden) == 1 else 'those uids'} would arrive as uid "
        f"{OVERFLOW_UID}, untrusted. Trust root only, or run the service with "
        "PrivateUsers=no (systemctl edit wrapalert.service; README, 'Running it as a service')"
    )
