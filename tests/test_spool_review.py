"""Review findings on the spool pass (daemon/spool.py), tested on the pass itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

from wrapalert import wire
from wrapalert.daemon import spool as spool_mod


def test_a_fallback_marker_larger_than_a_datagram_is_counted(tmp_path: Path) -> None:
    """A trusted uid's marker holds one byte per fallback: a flood past 4096 fallbacks
    between two passes (or while the daemon is down) must be counted, not refused as a
    spool file too large to be an event."""
    uid = os.geteuid()
    marker = tmp_path / f".{uid}.syslog.1"
    fallbacks = wire.MAX_DATAGRAM + 904
    marker.write_bytes(b"!" * fallbacks)
    marker.chmod(0o600)
    one = spool_mod._Pass(time.time() + 10, set(), set(), {}, None)
    one.directory(tmp_path, None)
    assert one.result.fallbacks == {uid: fallbacks}
    assert not one.result.rejected
