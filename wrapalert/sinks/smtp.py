"""SMTP sink: digests (and the daemon's notices) as multipart mail through aiosmtplib."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING

from wrapalert.confkeys import TIMEOUT, Choice, Count, Text, mail_from, mail_to, setting, sink_name
from wrapalert.model import Digest
from wrapalert.notice import Notice
from wrapalert.sinks.base import MAIL, DigestLook, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import DigestSinkType

if TYPE_CHECKING:  # jinja2 is imported by build(), not by parsing a config
    from wrapalert.mail import Renderer

# Server replies that mean "the same mail will fail again": bad credentials, policy.
_PERMANENT_AUTH = (530, 534, 535, 538)
TLS_MODES = ("none", "starttls", "tls")


@dataclass(frozen=True)
class SmtpSinkConfig:
    """A digest sink: each digest sent as one mail over SMTP."""

    name: str = sink_name("smtp")
    host: str = setting("localhost", "The SMTP server.", Text())
    port: int = setting(25, "Its port.", Count(minimum=1, maximum=65535))
    tls: str = setting(
        "none", "none, starttls or tls (implicit TLS, usually port 465).", Choice(TLS_MODES)
    )
    from_addr: str = mail_from()
    to: tuple[str, ...] = mail_to()
    username: str | None = setting(
        None, "For SMTP AUTH, with password.", Text(), shown="unset: no AUTH"
    )
    password: str | None = setting(
        None,
        "For SMTP AUTH; make the file readable by root only.",
        Text(),
        shown="unset: no AUTH",
    )
    timeout: float = setting(30.0, "How long one delivery attempt may take.", TIMEOUT)


def describe(cfg: SmtpSinkConfig) -> str:
    return f"smtp {cfg.host}:{cfg.port} tls={cfg.tls} to {', '.join(cfg.to)}"


def build(cfg: SmtpSinkConfig, look: DigestLook) -> SmtpSink:
    from wrapalert.mail import Renderer  # noqa: PLC0415 - jinja2 only once a sink is built

    return SmtpSink(cfg, Renderer(cfg.from_addr, cfg.to, look.template_dir, look.story))


class SmtpSink:
    """Delivers each digest as one mail to the configured recipients."""

    def __init__(self, cfg: SmtpSinkConfig, renderer: Renderer) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.renderer = renderer

    async def send(self, digest: Digest) -> None:
        await self.submit(self.renderer.render(digest))

    async def send_notice(self, notice: Notice) -> None:
        await self.submit(self.renderer.render_notice(notice))

    async def submit(self, message: EmailMessage) -> None:
        """One message to the server; errors classified as transient or permanent."""
        import aiosmtplib  # noqa: PLC0415 - parsing a config (check-config) needs no SMTP client

        cfg = self.cfg
        try:
            refused, _ = await aiosmtplib.send(
                message,
                sender=self.renderer.from_addr,
                recipients=list(self.renderer.to),
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password,
                use_tls=cfg.tls == "tls",
                # Explicit: aiosmtplib otherwise tries STARTTLS whenever offered.
                start_tls=cfg.tls == "starttls",
                timeout=cfg.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise _classify(min(codes), f"recipients refused: {codes}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, f"{exc.code} {exc.message}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentSinkError(f"TLS certificate not trusted: {exc}") from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            # STARTTLS or AUTH configured but not offered fails the same way every time
            # (aiosmtplib raises SMTPNotSupported, or a bare SMTPException, saying so).
            if isinstance(exc, aiosmtplib.SMTPNotSupported) or "not supported" in str(exc):
                raise PermanentSinkError(text) from exc
            raise TransientSinkError(text) from exc
        if refused:
            # Some recipients took it, some did not: the whole message is retried (or set
            # aside), so those that took it may get it twice, with the same Message-ID.
            codes = sorted({response.code for response in refused.values()})
            raise _classify(min(codes), f"recipients refused: {sorted(refused)} {codes}")


def _classify(code: int, text: str) -> Exception:
    if 500 <= code < 600 or code in _PERMANENT_AUTH:
        return PermanentSinkError(text)
    return TransientSinkError(text)


SINK = DigestSinkType(
    name="smtp",
    config=SmtpSinkConfig,
    describe=describe,
    build=build,
    mail=lambda cfg: (cfg.from_addr, cfg.to),
    takes=MAIL,
)
