"""SMTP sink: digests as multipart mail through aiosmtplib."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wrapalert.confparse import Key, KeyDocs, Table
from wrapalert.model import Digest
from wrapalert.sinks.base import DigestLook, PermanentSinkError, TransientSinkError
from wrapalert.sinks.registry import DigestSinkType

if TYPE_CHECKING:  # jinja2 is imported by build(), not by parsing a config
    from wrapalert.mail import Renderer

# Server replies that mean "the same mail will fail again": bad credentials, policy.
_PERMANENT_AUTH = (530, 534, 535, 538)
TLS_MODES = ("none", "starttls", "tls")


@dataclass(frozen=True)
class SmtpSinkConfig:
    """A digest sink: each digest sent as one mail over SMTP."""

    name: str = "smtp"
    host: str = "localhost"
    port: int = 25
    tls: str = "none"
    from_addr: str = "wrapalert@localhost"
    to: tuple[str, ...] = ("root",)
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0


def parse(t: Table) -> SmtpSinkConfig:
    d = SmtpSinkConfig()
    tls = t.get("tls", d.tls, str)
    if tls not in TLS_MODES:
        raise t.error("tls", f'{tls!r}: use "none", "starttls" or "tls"')
    return SmtpSinkConfig(
        name=t.get("name", "smtp", str),
        host=t.get("host", d.host, str),
        port=t.count("port", d.port, minimum=1, maximum=65535),
        tls=tls,
        from_addr=t.address("from", d.from_addr),
        to=t.addresses("to", d.to),
        username=t.get("username", None, str),
        password=t.get("password", None, str),
        timeout=t.positive_duration("timeout", d.timeout),
    )


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
        import aiosmtplib  # noqa: PLC0415 - parsing a config (check-config) needs no SMTP client

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


KEYS: KeyDocs = {
    "name": "The sink's name in status, routes and logs; unique among the sinks.",
    "host": "The SMTP server.",
    "port": "Its port.",
    "tls": "none, starttls or tls (implicit TLS, usually port 465).",
    "from": Key("The sender address of each digest.", field="from_addr"),
    "to": "Recipients; a bare local part such as root is qualified with this host's name.",
    "username": Key("For SMTP AUTH, with password.", default="unset: no AUTH"),
    "password": Key(
        "For SMTP AUTH; make the file readable by root only.", default="unset: no AUTH"
    ),
    "timeout": "How long one delivery attempt may take.",
}

SINK = DigestSinkType(
    name="smtp",
    config=SmtpSinkConfig,
    parse=parse,
    describe=describe,
    build=build,
    mail=lambda cfg: (cfg.from_addr, cfg.to),
    keys=KEYS,
)
