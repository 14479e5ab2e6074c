"""Digest mail: jinja2 templates in, a standards-conforming EmailMessage out.

Templates run in jinja2's sandbox; the HTML part is autoescaped. Event
values reach headers only through `header_text`, which removes control
characters (no CR/LF header injection) and bounds the length.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from wrapalert.model import Digest

SUBJECT_MAX = 120
_PACKAGE_TEMPLATES = Path(__file__).with_name("templates")
_SOURCE_TEMPLATES = Path(__file__).parent.parent / "templates"
_CONTROL = dict.fromkeys((*range(32), *range(127, 160)), " ")


def template_dirs(extra: Path | None = None) -> list[str]:
    """User templates first, then the installed package's, then the source tree's."""
    dirs = [extra] if extra else []
    dirs += [_PACKAGE_TEMPLATES, _SOURCE_TEMPLATES]
    return [str(d) for d in dirs if d.is_dir()]


def header_text(value: str, limit: int = SUBJECT_MAX) -> str:
    """One safe header line: control characters become spaces, runs collapse, length bounded."""
    text = " ".join(value.translate(_CONTROL).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def qualify(address: str, host: str) -> str:
    """`root` becomes `root@host`: a bare local part is refused over SMTP."""
    return address if "@" in address else f"{address}@{host}"


def known(pairs: tuple[tuple[str, int], ...]) -> list[str]:
    """The values of (value, count) pairs, less libwrap's "unknown"."""
    return [value for value, _ in pairs if value not in ("unknown", "")]


def local_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def short_time(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


class Renderer:
    """Turns a Digest into an EmailMessage; one per sink (sender and recipients differ)."""

    def __init__(
        self, from_addr: str, to: tuple[str, ...], template_dir: Path | None = None
    ) -> None:
        self.host = socket.gethostname()
        self.from_addr = qualify(from_addr, self.host)
        self.to = tuple(qualify(a, self.host) for a in to)
        loader = jinja2.FileSystemLoader(template_dirs(template_dir))
        self.text_env = SandboxedEnvironment(
            loader=loader,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        self.html_env = SandboxedEnvironment(
            loader=loader,
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        for env in (self.text_env, self.html_env):
            env.filters["when"] = local_time
            env.filters["hms"] = short_time
            env.filters["thousands"] = "{:,}".format
            env.filters["known"] = known

    def context(self, digest: Digest) -> dict[str, object]:
        groups = sorted(digest.groups, key=lambda g: (-g.events, g.key))
        daemons: dict[str, int] = {}
        for g in groups:
            for name, n in g.daemons:
                daemons[name] = daemons.get(name, 0) + n
        start, end = digest.window
        return {
            "digest": digest,
            "host": digest.host,
            "groups": groups,
            "trusted_groups": [g for g in groups if g.trusted],
            "untrusted_groups": [g for g in groups if not g.trusted],
            "daemons": sorted(daemons.items(), key=lambda kv: (-kv[1], kv[0])),
            "events": digest.events,
            "sources": digest.sources,
            "held": digest.held,
            "start": start,
            "end": end,
        }

    def render(self, digest: Digest) -> EmailMessage:
        ctx = self.context(digest)
        subject = self.text_env.get_template("subject.j2").render(ctx)
        text = self.text_env.get_template("mail.txt.j2").render(ctx)
        html = self.html_env.get_template("mail.html.j2").render(ctx)

        msg = EmailMessage()
        msg["Subject"] = header_text(subject)
        msg["From"] = Address(addr_spec=self.from_addr)
        msg["To"] = [Address(addr_spec=a) for a in self.to]
        msg["Date"] = format_datetime(datetime.fromtimestamp(digest.created, UTC))
        msg["Message-ID"] = f"<{digest.id}@{header_text(digest.host, 200)}>"
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
        msg["X-Wrapalert-Events"] = str(digest.events)
        msg["X-Wrapalert-Sources"] = str(digest.sources)
        msg["X-Wrapalert-Held"] = str(digest.held)
        msg["X-Wrapalert-Host"] = header_text(digest.host, 200)
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg
