"""`wrapalert test-alert`: one test notification to every sink, with a result per sink."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import timing
from helpers import (
    WRAPALERT,
    Running,
    SmtpServer,
    body,
    maildir_messages,
    make_config,
    write_config,
)
from timing import VirtualClock

from wrapalert.daemon import control
from wrapalert.daemon.server import Server
from wrapalert.mail import Renderer
from wrapalert.model import Digest, alert_test_report
from wrapalert.sinks.jsonl import JsonlSinkConfig
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.sinks.smtp import SmtpSinkConfig


def test_every_sink_is_tried_and_each_result_reported(sockdir: Path) -> None:
    """A working Maildir and jsonl file get the test; an MTA refusing with 554 is named
    with its words; no event is counted."""
    events = sockdir / "events.jsonl"

    async def scenario() -> tuple[dict[str, str], Server]:
        async with SmtpServer() as mta:
            mta.handler.reply = "554 5.7.1 not today"
            cfg = make_config(
                sockdir,
                MaildirSinkConfig(path=sockdir / "Maildir"),
                mta.sink(to=("root@localhost",)),
                JsonlSinkConfig(path=events),
            )
            server = Server(cfg)
            async with Running(server):
                reply = await asyncio.to_thread(
                    control.request, cfg.daemon.control_socket, "test_alert"
                )
        return reply["sinks"], server

    results, server = asyncio.run(scenario())
    assert results["maildir"] == "delivered"
    assert results["jsonl"] == "delivered"
    assert results["smtp"].startswith("failed: ")
    assert "not today" in results["smtp"]
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert "test alert" in msg["Subject"]
    assert msg["X-Wrapalert-Events"] == "0"
    assert "this sink works" in body(msg)
    (record,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert (record["daemon"], record["test"]) == ("wrapalert-test", True)
    status = server.status()
    assert status["received"] == 0
    sinks = status["sinks"]
    assert isinstance(sinks, dict)
    assert sinks["maildir"]["delivered"] == 0  # a test, not a digest of events


def test_a_sink_that_never_answers_is_reported_not_waited_for(sockdir: Path) -> None:
    """An MTA that accepts the connection and then says nothing: the reply still comes,
    within the control timeout, naming the sink that did not answer."""

    async def scenario() -> dict[str, str]:
        async def silent(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(3600)

        mute = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = mute.sockets[0].getsockname()[1]
        smtp = SmtpSinkConfig(host="127.0.0.1", port=port, timeout=60.0)
        cfg = make_config(sockdir, smtp)
        try:
            # On virtual time: the 8 s budget passes as soon as the loop is idle. The
            # request is the control protocol's one line, asked from this loop.
            async with Running(Server(cfg, clock=VirtualClock())):
                reader, writer = await asyncio.open_unix_connection(cfg.daemon.control_socket)
                writer.write(b'{"cmd": "test_alert"}\n')
                reply = json.loads(await reader.readline())
                writer.close()
        finally:
            mute.close()
        return dict(reply["sinks"])

    assert timing.run(scenario()) == {"smtp": "no answer within 8s"}


def test_the_test_digest_renders_as_a_test() -> None:
    msg = Renderer("wrapalert@localhost", ("root@localhost",)).render(
        Digest("web1", 1000.0, (alert_test_report(1000.0),))
    )
    assert msg["Subject"] == "[wrapalert] web1: test alert (wrapalert test-alert), no refusals"
    assert "this sink works" in body(msg, "html")
    assert msg["X-Wrapalert-Sources"] == "0"


def test_the_command_without_a_daemon_says_so(sockdir: Path) -> None:
    result = subprocess.run(
        [WRAPALERT, "test-alert", "-c", str(write_config(sockdir))],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "wrapalert is not running" in result.stderr
