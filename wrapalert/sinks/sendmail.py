"""sendmail sink: each digest piped to `sendmail -t -oi` (hosts with no SMTP listener).

The command gets the message on stdin and a minimal environment; its exit
status is read as sendmail's sysexits: 0 delivered (queued), 75 (EX_TEMPFAIL)
transient, any other status permanent with what it wrote to stderr. A command
that cannot be run at all is permanent (fix the config), one that outlives
`timeout` is killed and transient. The hardened unit does not let an MTA's
sendmail work (it writes its queue and changes user): see README.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING

from wrapalert.confkeys import TIMEOUT, Strings, mail_from, mail_to, setting, sink_name
from wrapalert.model import Digest
from wrapalert.notice import Notice
from wrapalert.sinks.base import MAIL, DigestLook, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import DigestSinkType

if TYPE_CHECKING:  # jinja2 is imported by build(), not by parsing a config
    from wrapalert.mail import Renderer

EX_TEMPFAIL = 75
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
STDERR_CHARS = 300


def _command(command: tuple[str, ...]) -> tuple[str, ...]:
    if not command or not command[0].startswith("/"):
        raise ValueError("needs an absolute program first, e.g. /usr/sbin/sendmail")
    for word in command:
        if not word or any(ord(c) < 32 or ord(c) == 127 for c in word):
            raise ValueError(f"{word!r}: empty, or holds a control character")
    return command


@dataclass(frozen=True)
class SendmailSinkConfig:
    """A digest sink for hosts without an SMTP listener: the message piped to a command."""

    name: str = sink_name("sendmail")
    command: tuple[str, ...] = setting(
        ("/usr/sbin/sendmail", "-t", "-oi"),
        "The program and its arguments; the message is piped to it (not under NoNewPrivileges=).",
        Strings(),
        check=_command,
    )
    from_addr: str = mail_from()
    to: tuple[str, ...] = mail_to()
    timeout: float = setting(60.0, "How long the command may run.", TIMEOUT)


def describe(cfg: SendmailSinkConfig) -> str:
    return f"sendmail {' '.join(cfg.command)} to {', '.join(cfg.to)}"


def build(cfg: SendmailSinkConfig, look: DigestLook) -> SendmailSink:
    from wrapalert.mail import Renderer  # noqa: PLC0415 - jinja2 only once a sink is built

    return SendmailSink(cfg, Renderer(cfg.from_addr, cfg.to, look.template_dir, look.story))


class SendmailSink:
    """Pipes each rendered digest into the configured sendmail command."""

    def __init__(self, cfg: SendmailSinkConfig, renderer: Renderer) -> None:
        self.name = cfg.name
        self.command = cfg.command
        self.timeout = cfg.timeout
        self.renderer = renderer

    async def send(self, digest: Digest) -> None:
        await self.submit(self.renderer.render(digest))

    async def send_notice(self, notice: Notice) -> None:
        await self.submit(self.renderer.render_notice(notice))

    async def submit(self, msg: EmailMessage) -> None:
        """Pipe one message to the command; its exit status says what happened."""
        # Local submission: the local newline convention, not SMTP's CRLF.
        data = msg.as_bytes(policy=msg.policy.clone(linesep="\n"))
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=ENV,
                start_new_session=True,  # our signals (SIGHUP reload) are not its business
            )
        except OSError as exc:  # missing, not executable: only the config can fix it
            raise PermanentSinkError(f"sendmail {self.command[0]}: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                _, err = await proc.communicate(data)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TransientSinkError(
                f"sendmail {self.command[0]}: no answer within {self.timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode == 0:
            return
        said = " ".join(err.decode("utf-8", "replace").split())[:STDERR_CHARS] or "no message"
        problem = f"sendmail {self.command[0]} exited {proc.returncode}: {said}"
        if proc.returncode == EX_TEMPFAIL:
            raise TransientSinkError(problem)
        raise PermanentSinkError(problem)


SINK = DigestSinkType(
    name="sendmail",
    config=SendmailSinkConfig,
    describe=describe,
    build=build,
    mail=lambda cfg: (cfg.from_addr, cfg.to),
    takes=MAIL,
)
