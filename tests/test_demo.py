"""`make run`'s demo: from nothing to a digest on the terminal and in the Maildir."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import WRAPALERT, libwrap_available, maildir_messages, require

pytestmark = pytest.mark.system


def test_demo_shows_a_digest_within_a_minute(sockdir: Path) -> None:
    """The demo prints the hook line, refuses a burst through libwrap, and shows the digest,
    which leads with its stories."""
    require(libwrap_available(), "libwrap0 is not installed (apt-get install libwrap0)")
    demo = sockdir / "demo"
    proc = subprocess.Popen(
        [WRAPALERT, "demo", "--dir", str(demo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    watchdog = threading.Timer(60, proc.kill)  # "within a minute", or the read loop ends
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("wrapalert digest "):
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    out = "".join(lines)
    assert "ALL : ALL : spawn (" in out
    assert f"simulate -c {demo}/wrapalert.toml" in out
    assert "libwrap refused 12 of 12 connections" in out
    assert "X-Wrapalert-Events: 12" in out
    assert "X-Wrapalert-Untrusted: 0" in out
    assert re.search(r"^(SCAN|SWEEP|BRUTE FORCE|REPEAT|PROBES) +\S", out, re.MULTILINE)
    (msg,) = maildir_messages(demo / "Maildir")
    assert msg["X-Wrapalert-Events"] == "12"
