"""Maildir sink: each digest (and notice) written atomically into a Maildir (tmp/ then new/)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wrapalert.clock import wall
from wrapalert.confkeys import PathValue, mail_from, mail_to, setting, sink_name
from wrapalert.model import Digest
from wrapalert.notice import Notice
from wrapalert.sinks.base import MAIL, DigestLook, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import DigestSinkType

if TYPE_CHECKING:  # jinja2 is imported by build(), not by parsing a config
    from wrapalert.mail import Renderer

_seq = itertools.count()


@dataclass(frozen=True)
class MaildirSinkConfig:
    """A digest sink: each digest written atomically into a Maildir (no MTA needed)."""

    name: str = sink_name("maildir")
    path: Path = setting(
        Path("/var/mail/wrapalert/Maildir"),
        "The Maildir each digest is written into, atomically (created if missing).",
        PathValue(),
    )
    from_addr: str = mail_from()
    to: tuple[str, ...] = mail_to()


def describe(cfg: MaildirSinkConfig) -> str:
    return f"maildir {cfg.path}"


def build(cfg: MaildirSinkConfig, look: DigestLook) -> MaildirSink:
    from wrapalert.mail import Renderer  # noqa: PLC0415 - jinja2 only once a sink is built

    return MaildirSink(cfg, Renderer(cfg.from_addr, cfg.to, look.template_dir, look.story))


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

    async def send_notice(self, notice: Notice) -> None:
        await asyncio.to_thread(self.deliver, bytes(self.renderer.render_notice(notice)))

    def deliver(self, data: bytes) -> Path:
        """Write `data` into new/ and return its path (Maildir's tmp-then-rename protocol)."""
        try:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        except NotADirectoryError as exc:
            raise PermanentSinkError(f"maildir {self.path}: {exc}") from exc
        except OSError as exc:
            raise TransientSinkError(f"maildir {self.path}: {exc}") from exc
        now = wall()  # Maildir names are the kernel's time, as other deliverers write them
        host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        # Microseconds zero-padded: within a second, names then sort in delivery order.
        name = f"{int(now)}.M{int(now * 1e6) % 1000000:06d}P{os.getpid()}Q{next(_seq)}.{host}"
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


SINK = DigestSinkType(
    name="maildir",
    config=MaildirSinkConfig,
    describe=describe,
    build=build,
    mail=lambda cfg: (cfg.from_addr, cfg.to),
    takes=MAIL,
)
