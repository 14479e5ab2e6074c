"""Maildir sink: each digest written atomically into a Maildir (tmp/ then new/)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from wrapalert.config import MaildirSinkConfig
from wrapalert.mail import Renderer
from wrapalert.model import Digest
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError

_seq = itertools.count()


class MaildirSink:
    """Writes each digest as one message file; readers see only complete files."""

    def __init__(self, cfg: MaildirSinkConfig, renderer: Renderer) -> None:
        self.name = cfg.name
        self.path = cfg.path
        self.renderer = renderer

    async def send(self, digest: Digest) -> None:
        data = bytes(self.renderer.render(digest))
        # A local disk write: short enough for a thread, too slow for the event loop.
        await asyncio.to_thread(self.deliver, data)

    def deliver(self, data: bytes) -> Path:
        """Write `data` into new/ and return its path (Maildir's tmp-then-rename protocol)."""
        try:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        except NotADirectoryError as exc:
            raise PermanentSinkError(f"maildir {self.path}: {exc}") from exc
        except OSError as exc:
            raise TransientSinkError(f"maildir {self.path}: {exc}") from exc
        now = time.time()
        host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_seq)}.{host}"
        tmp = self.path / "tmp" / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with os.fdopen(os.open(tmp, flags, 0o600), "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            final = self.path / "new" / name
            tmp.rename(final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransientSinkError(f"maildir {self.path}: {exc}") from exc
        return final
