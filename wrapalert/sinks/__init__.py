"""Sinks: where notifications go. One file per sink; `build` maps config to sink."""

from __future__ import annotations

from pathlib import Path

from wrapalert.config import MaildirSinkConfig, SinkConfig, SmtpSinkConfig
from wrapalert.mail import Renderer
from wrapalert.sinks.base import PermanentSinkError, Sink, SinkError, TransientSinkError
from wrapalert.sinks.maildir import MaildirSink
from wrapalert.sinks.smtp import SmtpSink

__all__ = ["PermanentSinkError", "Sink", "SinkError", "TransientSinkError", "build"]


def build(cfg: SinkConfig, template_dir: Path | None = None) -> Sink:
    """The sink for one `[[sink]]` table."""
    renderer = Renderer(cfg.from_addr, cfg.to, template_dir)
    if isinstance(cfg, SmtpSinkConfig):
        return SmtpSink(cfg, renderer)
    if isinstance(cfg, MaildirSinkConfig):
        return MaildirSink(cfg, renderer)
    raise TypeError(f"no sink for {type(cfg).__name__}")
