"""Fixtures and hooks only; what tests share otherwise is in helpers.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from helpers import jsonl_config, running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """`require` reads the running test's markers (helpers.py): a test that needs the
    system and is not marked `system` fails."""
    with running(item):
        yield


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for AF_UNIX paths (at most 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    path.chmod(0o755)  # other uids (setpriv tests) must reach the socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cfg_path(sockdir: Path) -> Path:
    """A config whose jsonl sink records every event the daemon receives, unthrottled."""
    return jsonl_config(sockdir)
