"""The packaged logrotate configuration rotates the jsonl sink's file under load and no
record is lost or split: the sink reopens the file for every batch."""

from __future__ import annotations

import asyncio
import grp
import gzip
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import require

from wrapalert.sinks.jsonl import JsonlSink, JsonlSinkConfig

ROOT = Path(__file__).resolve().parent.parent
LOGROTATE = ROOT / "packaging" / "debian" / "wrapalert.logrotate"
BATCHES = 200
PER_BATCH = 50
ROTATIONS = 6


def records_in(directory: Path) -> list[int]:
    """Every record's number in the live file and its rotations (compressed or not); a
    split or garbled line fails to parse."""
    numbers = []
    for path in sorted(directory.glob("events.jsonl*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        numbers += [json.loads(line)["n"] for line in data.decode().splitlines()]
    return numbers


def write_under_rotation(directory: Path, rotate: Callable[[], None]) -> None:
    """BATCHES batches through a real jsonl sink while `rotate` runs ROTATIONS times
    (in a thread, as logrotate runs beside the daemon)."""
    sink = JsonlSink(JsonlSinkConfig(path=directory / "events.jsonl"))

    async def writer() -> None:
        for b in range(BATCHES):
            batch = [{"type": "event", "n": b * PER_BATCH + i} for i in range(PER_BATCH)]
            await sink.send_records(batch)
            await asyncio.sleep(0)

    async def rotator() -> None:
        for _ in range(ROTATIONS):
            await asyncio.sleep(0.01)
            await asyncio.to_thread(rotate)

    async def both() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer())
            tg.create_task(rotator())

    asyncio.run(both())


@pytest.mark.system
def test_logrotate_with_the_packaged_config_loses_no_record(tmp_path: Path) -> None:
    """The real logrotate, forced to rotate six times with the packaged rules while the
    sink writes 10,000 records in batches, leaves every record exactly once, whole."""
    binary = shutil.which("logrotate")
    require(binary is not None, "logrotate not found (apt-get install logrotate)")
    assert binary is not None
    logs = tmp_path / "log"
    logs.mkdir()
    conf = tmp_path / "wrapalert.logrotate"
    text = LOGROTATE.read_text()
    assert text.count("/var/log/wrapalert/") == 1
    # The package's user exists only where the package is installed: rotate as whoever
    # runs the test, which owns the files here as the daemon owns them there.
    assert text.count("su wrapalert wrapalert") == 1
    me = f"su {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    conf.write_text(
        text.replace("/var/log/wrapalert/", f"{logs}/").replace("su wrapalert wrapalert", me)
    )
    conf.chmod(0o644)  # logrotate skips a config others may write

    def rotate() -> None:
        done = subprocess.run(
            [binary, "--force", "--state", str(tmp_path / "state"), str(conf)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    write_under_rotation(logs, rotate)
    rotated = [p.name for p in logs.iterdir() if p.name != "events.jsonl"]
    assert "events.jsonl.1" in rotated  # the newest rotation waits one round to be compressed
    assert any(name.endswith(".gz") for name in rotated)
    assert sorted(records_in(logs)) == list(range(BATCHES * PER_BATCH))


def test_a_rename_as_logrotate_does_by_default_loses_no_record(tmp_path: Path) -> None:
    """Without logrotate: renaming the file away under load (logrotate's default, no
    copytruncate) loses nothing either, as the next batch creates a new file."""
    count = 0

    def rotate() -> None:
        nonlocal count
        count += 1
        live = tmp_path / "events.jsonl"
        if live.exists():
            live.rename(tmp_path / f"events.jsonl.{count}")

    write_under_rotation(tmp_path, rotate)
    assert len(list(tmp_path.glob("events.jsonl.*"))) >= 2
    assert sorted(records_in(tmp_path)) == list(range(BATCHES * PER_BATCH))
