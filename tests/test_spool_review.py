"""Review findings on the spool pass (daemon/spool.py), tested on the pass itself."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
from helpers import require
from timing import ManualClock

from wrapalert import wire
from wrapalert.daemon import spool as spool_mod

YEAR_2100 = 4102444800

if TYPE_CHECKING:
    from wrapalert.daemon.intake import Intake
    from wrapalert.daemon.store import Store


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


@pytest.mark.system
def test_junk_in_the_shared_spool_cannot_starve_a_trusted_uids_own_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass reads SPOOL_BATCH files: a local user who keeps that many junk files in the
    shared spool (cheap: each pass removes them) must not leave root's own spool unread,
    pass after pass, until it is full and root's events go to syslog."""
    require(os.geteuid() == 0, "making a trusted uid's own spool dir needs root")
    monkeypatch.setattr(spool_mod, "SPOOL_BATCH", 5)
    shared = tmp_path / "spool"
    shared.mkdir()
    shared.chmod(0o1777)
    intake = SimpleNamespace(trusted=frozenset({0}), count_junk=lambda _junk: None)
    spool = spool_mod.Spool(
        shared,
        intake=cast("Intake", intake),
        store=cast("Store", None),
        commit=lambda: True,
        clock=ManualClock(),
    )
    spool.ensure()
    own = shared / "0"
    (own / "9.1.wa1").write_bytes(b"WA1\nd=sshd\na=192.0.2.1\n")
    (own / "9.1.wa1").chmod(0o600)
    for i in range(spool_mod.SPOOL_BATCH):
        (shared / f"1.{i}.wa1").write_bytes(b"junk")
    found = spool.scan(time.time(), set())
    assert "0/9.1.wa1" in [f.name for f in found.files]


def test_a_trusted_uids_dir_swapped_for_a_symlink_leads_nowhere(tmp_path: Path) -> None:
    """Between the check of `spool/<uid>` and the pass (or the removal after a commit),
    its owner may swap it for a symlink to another directory: neither the sweep nor the
    removal follows it there (a root-run daemon would delete what it finds)."""
    uid = os.geteuid()
    spool, victim = tmp_path / "spool", tmp_path / "victim"
    spool.mkdir()
    victim.mkdir()
    stale = victim / ".stale"  # a dot file the sweep would remove as stale junk
    stale.write_bytes(b"")
    os.utime(stale, (YEAR_2100, YEAR_2100))
    (victim / "1700000000.000001.wa1").write_bytes(b"not a spool file of ours")
    (spool / str(uid)).symlink_to(victim)
    one = spool_mod._Pass(time.time(), set(), {str(uid)}, {}, None)
    one.directory(spool / str(uid), uid)
    assert (one.result.files, one.result.rejected) == ([], Counter())
    stay = spool_mod.remove_all(spool, [f"{uid}/1700000000.000001.wa1"])
    assert stay == [f"{uid}/1700000000.000001.wa1"]
    assert sorted(p.name for p in victim.iterdir()) == [".stale", "1700000000.000001.wa1"]
