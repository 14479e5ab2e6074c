"""SMTP sink: digests as multipart mail through aiosmtplib."""

from __future__ import annotations

import ssl

import aiosmtplib

from wrapalert.config import SmtpSinkConfig
from wrapalert.mail import Renderer
from wrapalert.model import Digest
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError

# Server replies that mean "the same mail will fail again": bad credentials, policy.
_PERMANENT_AUTH = (530, 534, 535, 538)


class SmtpSink:
    """Delivers each digest as one mail to the configured recipients."""

    def __init__(self, cfg: SmtpSinkConfig, renderer: Renderer) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.renderer = renderer

    async def send(self, digest: Digest) -> None:
        message = self.renderer.render(digest)
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
