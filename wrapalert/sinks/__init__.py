"""Sinks: where notifications go. One file per sink; `build` maps config to sink."""

from __future__ import annotations

from pathlib import Path

from wrapalert.config import (
    AlertmanagerSinkConfig,
    JournaldSinkConfig,
    JsonlSinkConfig,
    MaildirSinkConfig,
    SendmailSinkConfig,
    SinkConfig,
    SmtpSinkConfig,
    SyslogSinkConfig,
    WebhookSinkConfig,
)
from wrapalert.mail import Renderer
from wrapalert.sinks.alertmanager import AlertmanagerSink
from wrapalert.sinks.base import (
    EventSink,
    PermanentSinkError,
    Sink,
    SinkError,
    TransientSinkError,
)
from wrapalert.sinks.journald import JournaldSink
from wrapalert.sinks.jsonl import JsonlSink
from wrapalert.sinks.maildir import MaildirSink
from wrapalert.sinks.sendmail import SendmailSink
from wrapalert.sinks.smtp import SmtpSink
from wrapalert.sinks.syslog import SyslogSink
from wrapalert.sinks.webhook import WebhookSink

__all__ = [
    "EventSink",
    "PermanentSinkError",
    "Sink",
    "SinkError",
    "TransientSinkError",
    "build",
]


def build(cfg: SinkConfig, template_dir: Path | None = None) -> Sink | EventSink:  # noqa: PLR0911 - a return per sink type
    """The sink for one `[[sink]]` table: a digest sink or a forwarding (event) sink."""
    if isinstance(cfg, JsonlSinkConfig):
        return JsonlSink(cfg)
    if isinstance(cfg, SyslogSinkConfig):
        return SyslogSink(cfg)
    if isinstance(cfg, JournaldSinkConfig):
        return JournaldSink(cfg)
    if isinstance(cfg, AlertmanagerSinkConfig):
        return AlertmanagerSink(cfg)
    if isinstance(cfg, WebhookSinkConfig):
        return WebhookSink(cfg)
    renderer = Renderer(cfg.from_addr, cfg.to, template_dir)
    if isinstance(cfg, SmtpSinkConfig):
        return SmtpSink(cfg, renderer)
    if isinstance(cfg, MaildirSinkConfig):
        return MaildirSink(cfg, renderer)
    if isinstance(cfg, SendmailSinkConfig):
        return SendmailSink(cfg, renderer)
    raise TypeError(f"no sink for {type(cfg).__name__}")
