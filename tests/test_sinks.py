"""Sinks against real servers and real directories: success and each kind of failure."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from helpers import SmtpServer, free_port, maildir_messages, one_group

from wrapalert.mail import Renderer
from wrapalert.sinks import build
from wrapalert.sinks.base import EventSink, PermanentSinkError, Sink, TransientSinkError
from wrapalert.sinks.maildir import MaildirSink, MaildirSinkConfig
from wrapalert.sinks.smtp import SmtpSinkConfig


def digest_sink(cfg: SmtpSinkConfig | MaildirSinkConfig) -> Sink:
    """The mail sink `build` makes for a config (never a forwarding sink here)."""
    sink = build(cfg)
    assert not isinstance(sink, EventSink)
    return sink


def test_smtp_delivers_to_qualified_recipients() -> None:
    """The SMTP sink hands the digest to the server, envelope recipients qualified."""

    async def scenario() -> SmtpServer:
        async with SmtpServer() as smtp:
            await digest_sink(smtp.sink(to=("root", "ops@example.com"))).send(
                one_group(created=3.0)
            )
            return smtp

    smtp = asyncio.run(scenario())
    (envelope,) = smtp.handler.envelopes
    host = socket.gethostname()
    assert envelope.rcpt_tos == [f"root@{host}", "ops@example.com"]
    assert envelope.mail_from == "wrapalert@localhost"
    assert smtp.handler.messages[0]["X-Wrapalert-Events"] == "2"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("451 4.3.0 try later", TransientSinkError),
        ("421 4.7.0 closing", TransientSinkError),
        ("554 5.7.1 rejected", PermanentSinkError),
        ("550 5.1.1 no such user", PermanentSinkError),
    ],
)
def test_smtp_replies_are_classified(reply: str, error: type[Exception]) -> None:
    """4xx replies are transient (retry), 5xx permanent (record, do not retry)."""

    async def scenario() -> None:
        async with SmtpServer() as smtp:
            smtp.handler.reply = reply
            with pytest.raises(error, match=reply[:3]):
                await digest_sink(smtp.sink()).send(one_group(created=3.0))

    asyncio.run(scenario())


def test_smtp_connection_refused_is_transient() -> None:
    """No server listening is a transient failure: the MTA may come back."""
    sink = digest_sink(SmtpSinkConfig(host="127.0.0.1", port=free_port(), timeout=2))
    with pytest.raises(TransientSinkError):
        asyncio.run(sink.send(one_group(created=3.0)))


def test_smtp_timeout_is_transient() -> None:
    """A server that accepts but never answers is a transient failure after the timeout."""

    async def scenario() -> None:
        server = await asyncio.start_server(lambda _r, _w: asyncio.sleep(60), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            sink = digest_sink(SmtpSinkConfig(host="127.0.0.1", port=port, timeout=0.3))
            with pytest.raises(TransientSinkError):
                await sink.send(one_group(created=3.0))

    asyncio.run(scenario())


def test_maildir_delivery_is_complete_and_private(tmp_path: Path) -> None:
    """A delivered digest is one complete 0600 file in new/, nothing left in tmp/."""
    maildir = tmp_path / "Maildir"
    asyncio.run(digest_sink(MaildirSinkConfig(path=maildir)).send(one_group(5, created=3.0)))
    (msg,) = maildir_messages(maildir)
    assert msg["X-Wrapalert-Events"] == "5"
    (path,) = (maildir / "new").iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    assert list((maildir / "tmp").iterdir()) == []


def test_maildir_names_are_unique(tmp_path: Path) -> None:
    """Many digests in the same second get distinct file names."""
    sink = MaildirSink(MaildirSinkConfig(path=tmp_path / "M"), Renderer("a@b", ("root",)))
    paths = {sink.deliver(b"Subject: x\n\nx\n") for _ in range(50)}
    assert len(paths) == 50


def test_maildir_under_a_file_is_permanent(tmp_path: Path) -> None:
    """A Maildir path below a regular file cannot work until the config changes."""
    (tmp_path / "file").write_text("")
    sink = digest_sink(MaildirSinkConfig(path=tmp_path / "file" / "Maildir"))
    with pytest.raises(PermanentSinkError):
        asyncio.run(sink.send(one_group(created=3.0)))


def test_maildir_unwritable_is_transient(tmp_path: Path) -> None:
    """A Maildir we may not write (for now) is a transient failure: retry later."""
    if os.geteuid() == 0:
        pytest.skip("root writes through any mode bits")
    maildir = tmp_path / "M"
    maildir.mkdir()
    maildir.chmod(0o500)
    with pytest.raises(TransientSinkError):
        asyncio.run(digest_sink(MaildirSinkConfig(path=maildir)).send(one_group(created=3.0)))


def test_smtp_a_recipient_refused_among_accepted_ones_is_not_delivered() -> None:
    """If the server refuses one recipient (451) but takes another, the send is not counted
    as delivered: it is retried, so the refused recipient gets it in the end."""

    async def scenario() -> None:
        async with SmtpServer() as smtp:
            smtp.handler.refuse_rcpt = {"bob@example.org": "451 4.3.0 try later"}
            sink = digest_sink(smtp.sink(to=("root@example.org", "bob@example.org")))
            with pytest.raises(TransientSinkError, match=r"bob@example\.org"):
                await sink.send(one_group(created=3.0))

    asyncio.run(scenario())


def test_smtp_starttls_not_offered_is_permanent() -> None:
    """tls = "starttls" against a server without STARTTLS fails the same way every time:
    permanent (set aside, shown in status), not retried for ever."""

    async def scenario() -> None:
        async with SmtpServer() as smtp:
            with pytest.raises(PermanentSinkError, match="STARTTLS"):
                await digest_sink(smtp.sink(tls="starttls")).send(one_group(created=3.0))

    asyncio.run(scenario())
