"""Digest mail: jinja2 templates in, a standards-conforming EmailMessage out.

Templates run in jinja2's sandbox; the HTML part is autoescaped. Event
values reach headers only through `header_text`, which removes control
characters (no CR/LF header injection) and bounds the length.

User templates (`[digest] template_dir`) override the built-in ones file by
file and may include ours as `builtin/NAME`. One that fails to load or
render (syntax error, runtime error, undefined variable) is logged and the
built-in one is used instead: a template never costs a mail.

The template context is built, and documented, in digest_view.context.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from html import escape
from pathlib import Path
from typing import Any

import jinja2
import structlog
from jinja2.sandbox import SandboxedEnvironment

from wrapalert.digest_view import (
    cell,
    clip,
    context,
    duration,
    fit,
    known,
    local_time,
    short_time,
    tally,
    wrap,
)
from wrapalert.model import Digest
from wrapalert.notice import Notice
from wrapalert.notice import context as notice_context
from wrapalert.story import StoryRule

log = structlog.get_logger()

SUBJECT_MAX = 78  # characters of header text: one line on an 80-column screen
HEADER_MAX = 120
MAX_LINE = 998  # RFC 5322 2.1.1: bytes per line, CRLF excluded
THREAD_REFS = 10  # group thread ids in References: the largest groups of the digest
_PACKAGE_TEMPLATES = Path(__file__).with_name("templates")
_SOURCE_TEMPLATES = Path(__file__).parent.parent / "templates"
_CONTROL = dict.fromkeys((*range(32), *range(127, 160)), " ")
_NOT_DOMAIN = re.compile(r"[^A-Za-z0-9.-]+")


class _MessageIds(UnstructuredHeader, BaseHeader):
    """References/In-Reply-To: one msg-id per line, never RFC 2047-encoded.

    The stock unstructured header encodes a long msg-id as encoded words,
    which no mail reader matches, and the thread breaks.
    """

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f"{policy.linesep} ".join(str(self).split()) + policy.linesep


class _Fact(UnstructuredHeader, BaseHeader):
    """A machine-readable X-Wrapalert-* value: one unencoded line while it is ASCII, so
    filters can match it (the stock header would fold a long one into encoded words)."""

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if value.isascii():
            return f"{self.name}: {value}{policy.linesep}"
        return super().fold(policy=policy)


class _Subject(UnstructuredHeader, BaseHeader):
    """The subject, folded at its last spaces before 78 columns while it is ASCII.

    The stock folder moves a subject that fits one continuation line whole onto it,
    so strict parsers read it back with a leading space."""

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if not value.isascii() or any(len(word) > SUBJECT_MAX for word in value.split(" ")):
            return super().fold(policy=policy)
        lines, line = [], f"{self.name}:"
        for word in value.split(" "):
            if len(line) + 1 + len(word) > SUBJECT_MAX and line.strip():
                lines.append(line)
                line = ""
            line += f" {word}"
        return f"{policy.linesep}".join([*lines, line]) + policy.linesep


_headers = HeaderRegistry()
_headers.map_to_type("subject", _Subject)
_headers.map_to_type("x-wrapalert-host", _Fact)
_headers.map_to_type("references", _MessageIds)
_headers.map_to_type("in-reply-to", _MessageIds)
POLICY = EmailPolicy(header_factory=_headers)


def template_dirs(extra: Path | None = None) -> list[str]:
    """User templates first (when given), then the installed package's, then the source tree's."""
    dirs = [extra] if extra else []
    dirs += [_PACKAGE_TEMPLATES, _SOURCE_TEMPLATES]
    return [str(d) for d in dirs if d.is_dir()]


def header_text(value: str, limit: int = HEADER_MAX) -> str:
    """One safe header line: control characters become spaces, runs collapse, length bounded."""
    text = " ".join(value.translate(_CONTROL).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def msgid_domain(host: str) -> str:
    """An ASCII domain for msg-ids: IDNA (or punycode) for non-ASCII, odd bytes as `-`."""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:  # not a valid IDN (label too long, ...): punycode is always ASCII
            host = host.encode("punycode").decode("ascii")
    return _NOT_DOMAIN.sub("-", host).strip(".-")[:200] or "localhost"


def thread_id(key: tuple[str, ...], domain: str) -> str:
    """The stable msg-id every digest about this group refers to, so they thread together."""
    digest = hashlib.sha256("\x00".join(key).encode("utf-8", "surrogatepass")).hexdigest()
    return f"<wrapalert-group-{digest[:16]}@{domain}>"


def transfer_encoding(text: str) -> str:
    """7bit when every line is ASCII and short enough for SMTP; else quoted-printable."""
    if text.isascii() and all(len(line) <= MAX_LINE for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def qualify(address: str, host: str) -> str:
    """`root` becomes `root@host`: a bare local part is refused over SMTP."""
    return address if "@" in address else f"{address}@{host}"


# -- filters ---------------------------------------------------------------------------


def _clean(value: object) -> object:
    """Jinja's finalize: no control character (terminal escapes, newlines) from any value."""
    return value.translate(_CONTROL) if type(value) is str else value


def _environment(loader: jinja2.BaseLoader, *, html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=loader,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=not html,
        finalize=_clean,
    )
    env.filters.update(
        when=local_time,
        hms=short_time,
        thousands="{:,}".format,
        known=known,
        cell=cell,
        fit=fit,
        tally=tally,
        duration=duration,
        clip=clip,
        wrap=wrap,
    )
    return env


class _Templates:
    """The text and the HTML environment over one loader."""

    def __init__(self, loader: jinja2.BaseLoader) -> None:
        self.text = _environment(loader, html=False)
        self.html = _environment(loader, html=True)

    def render(self, name: str, ctx: dict[str, Any]) -> str:
        env = self.html if name.endswith(".html.j2") else self.text
        return env.get_template(name).render(ctx)


@functools.cache
def _builtin() -> tuple[jinja2.FileSystemLoader, _Templates]:
    """Our own templates and their environments, one per process: every renderer (one per
    sink, made again at each reload) shares them, so each template compiles once (about
    0.1 s for the three), not once per renderer. jinja2 still notices a changed file."""
    loader = jinja2.FileSystemLoader(template_dirs())
    return loader, _Templates(loader)


def _bare(name: str, ctx: dict[str, Any]) -> str:
    """The last resort when even our template fails: the counts (a notice: what it is
    about), in one line."""
    if name.startswith("notice"):
        line = f"wrapalert on {header_text(ctx['host'], 200)}: {ctx['headline']}: {ctx['subject']}"
        if name == "notice_subject.j2":
            return f"[wrapalert] {ctx['headline']}: {ctx['subject']}"
        return f"<p>{escape(line)}</p>" if name.endswith(".html.j2") else line + "\n"
    line = (
        f"wrapalert on {header_text(ctx['host'], 200)}: {ctx['events']:,} refused from "
        f"{ctx['sources']:,} sources (the digest template failed: see wrapalert's log)"
    )
    if name == "subject.j2":
        return (
            f"[wrapalert] {ctx['events']:,} refused, {ctx['sources']:,} sources (template failed)"
        )
    return f"<p>{escape(line)}</p>" if name.endswith(".html.j2") else line + "\n"


class Renderer:
    """Turns a Digest into an EmailMessage; one per sink (sender and recipients differ)."""

    def __init__(
        self,
        from_addr: str,
        to: tuple[str, ...],
        template_dir: Path | None = None,
        story: StoryRule | None = None,
    ) -> None:
        self.story = story or StoryRule()
        self.host = socket.gethostname()
        self.from_addr = qualify(from_addr, self.host)
        self.to = tuple(qualify(a, self.host) for a in to)
        builtin, self.builtin = _builtin()
        self.template_dir = template_dir
        self.user: _Templates | None = None
        if template_dir is not None:
            if not template_dir.is_dir():
                log.error("template_dir_missing", template_dir=str(template_dir))
            user = jinja2.FileSystemLoader(str(template_dir))
            self.user = _Templates(
                jinja2.ChoiceLoader([user, jinja2.PrefixLoader({"builtin": builtin})])
            )

    def part(self, name: str, ctx: dict[str, Any]) -> str:
        """`name` rendered from the user's template if it works, else from ours."""
        if self.user is not None:
            try:
                return self.user.render(name, ctx)
            except jinja2.TemplateNotFound as exc:
                if exc.name != name:  # an include inside the user's template is missing
                    self._failed(name, exc, self.template_dir)
            except Exception as exc:  # noqa: BLE001 - a user template may raise anything: ours is the fallback
                self._failed(name, exc, self.template_dir)
        try:
            return self.builtin.render(name, ctx)
        except Exception as exc:  # noqa: BLE001 - e.g. templates not installed: a bare mail beats none
            self._failed(name, exc, None)
            return _bare(name, ctx)

    @staticmethod
    def _failed(name: str, exc: Exception, template_dir: Path | None) -> None:
        log.error(
            "template_failed",
            template=name,
            template_dir=str(template_dir) if template_dir else "built-in",
            error=f"{type(exc).__name__}: {exc}"[:300],
        )

    def render(self, digest: Digest) -> EmailMessage:
        ctx = context(digest, self.story)
        subject = header_text(self.part("subject.j2", ctx), SUBJECT_MAX)
        text = self.part("mail.txt.j2", ctx)
        html = self.part("mail.html.j2", ctx)
        domain = msgid_domain(digest.host)

        msg = EmailMessage(policy=POLICY)
        msg["Subject"] = subject
        msg["From"] = Address(addr_spec=self.from_addr)
        msg["To"] = [Address(addr_spec=a) for a in self.to]
        msg["Date"] = datetime.fromtimestamp(digest.created, UTC)
        msg["Message-ID"] = f"<{digest.id}@{domain}>"
        groups = ctx["groups"]  # busiest first: they lead the bounded list
        threads = list(dict.fromkeys(thread_id(g.key, domain) for g in groups))[:THREAD_REFS]
        if threads:
            msg["In-Reply-To"] = threads[0]
            msg["References"] = " ".join(threads)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
        # Trusted reports only; untrusted ones are counted apart, so the two add up.
        msg["X-Wrapalert-Events"] = str(ctx["events"])
        msg["X-Wrapalert-Untrusted"] = str(ctx["untrusted_events"])
        msg["X-Wrapalert-Sources"] = str(ctx["sources"])
        msg["X-Wrapalert-Held"] = str(digest.held)
        msg["X-Wrapalert-Host"] = header_text(digest.host, 200)
        # For filters: the highest route severity, and how many scans the digest found.
        msg["X-Wrapalert-Severity"] = digest.severity
        msg["X-Wrapalert-Scans"] = str(len(ctx["scans"]) + ctx["more_scans"])
        msg.set_content(text, charset="utf-8", cte=transfer_encoding(text))
        msg.add_alternative(html, subtype="html", charset="utf-8", cte=transfer_encoding(html))
        return msg

    def render_notice(self, notice: Notice) -> EmailMessage:
        """A notice (alarm off, alarm on, a quiet daemon) as a mail of its own: its own
        templates and subject, `X-Wrapalert-Notice: KIND`, and no events (its
        X-Wrapalert-Events and -Untrusted say 0, so the counts of all mails still add up)."""
        ctx = notice_context(notice)
        subject = header_text(self.part("notice_subject.j2", ctx), SUBJECT_MAX)
        text = self.part("notice.txt.j2", ctx)
        html = self.part("notice.html.j2", ctx)
        msg = EmailMessage(policy=POLICY)
        msg["Subject"] = subject
        msg["From"] = Address(addr_spec=self.from_addr)
        msg["To"] = [Address(addr_spec=a) for a in self.to]
        msg["Date"] = datetime.fromtimestamp(notice.created, UTC)
        msg["Message-ID"] = f"<{notice.id}@{msgid_domain(notice.host)}>"
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Wrapalert-Notice"] = notice.kind
        msg["X-Wrapalert-Events"] = "0"
        msg["X-Wrapalert-Untrusted"] = "0"
        msg["X-Wrapalert-Host"] = header_text(notice.host, 200)
        msg.set_content(text, charset="utf-8", cte=transfer_encoding(text))
        msg.add_alternative(html, subtype="html", charset="utf-8", cte=transfer_encoding(html))
        return msg
