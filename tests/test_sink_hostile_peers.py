"""Forwarding sinks against peers that misbehave: stalled, hostile, misnamed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import NO_DIGESTS, stalled_collector

from wrapalert import config
from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.sinks import build
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.syslog import SyslogSink, SyslogSinkConfig, message_text
from wrapalert.sinks.webhook import WebhookSink, WebhookSinkConfig


def established_to(port: int) -> int:
    """TCP connections ESTABLISHED with local port `port` (the collector's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                    count += 1
    return count


def test_retries_against_a_stalled_collector_leave_no_connections_behind() -> None:
    """Each "no progress" failure drops its connection at once; close() would keep it
    (and its buffered bytes) until a collector that never reads drained it."""

    async def scenario() -> tuple[int, int]:
        server, port = await stalled_collector()
        sink = build(replace_syslog(address=("127.0.0.1", port), protocol="tcp", timeout=0.3))
        assert isinstance(sink, SyslogSink)
        big: dict[str, object] = {"type": "event", "daemon": "sshd", "client": "x" * 250}
        big["server"] = "y" * 250
        failures = 0
        for _ in range(1000):
            with contextlib.suppress(TransientSinkError):
                await sink.send_records([big] * 500)
                continue
            failures += 1
            if failures == 2:  # two dropped connections would be two left open
                break
        await asyncio.sleep(0.3)
        open_now = established_to(port)
        await sink.aclose()
        server.close()
        return failures, open_now

    failures, open_now = asyncio.run(scenario())
    assert failures == 2
    assert open_now <= 1  # at most the one a third try would use


def replace_syslog(**kw: Any) -> SyslogSinkConfig:
    return replace(SyslogSinkConfig(), **kw)


def test_long_values_never_cut_off_that_a_report_is_untrusted() -> None:
    record: dict[str, object] = {
        "type": "event",
        "daemon": "d" * 255,
        "client": "c" * 255,
        "server": "s" * 255,
        "server_addr": "a" * 255,
        "host": "h" * 255,
        "user": "u" * 255,
        "client_name": "n" * 255,
        "client_host": "o" * 255,
        "verdict": "deny",
        "trusted": False,
        "uid": 65534,
    }
    text = message_text(record)
    assert text.endswith("truncated=true")
    assert text.startswith("refused verdict=deny trusted=false uid=65534 ")


@pytest.mark.parametrize("bad", ["am2..example", "x" * 64 + ".example"])
def test_host_names_the_resolver_cannot_take_are_refused_at_load(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "wrapalert.toml"
    for table in (
        f'type = "alertmanager"\nurls = ["http://127.0.0.1:9093", "http://{bad}:9093"]',
        f'type = "webhook"\nurl = "https://{bad}/hook"',
        f'type = "syslog"\naddress = "{bad}:514"',
    ):
        path.write_text(f"[[sink]]\n{table}\n{NO_DIGESTS}")
        with pytest.raises(ConfigError) as caught:
            config.load(path)
        assert str(path) in str(caught.value)


def test_a_hostile_servers_words_cannot_reach_the_terminal() -> None:
    """C1 controls (a CSI that clears the screen) and a bidi override in the reason phrase
    and body come back as "?" in the error that status and test-alert print."""

    async def scenario() -> str:
        async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = "\u009b1;1H\u202eok".encode()
            writer.write(
                b"HTTP/1.1 503 \x9b2J\x9b31mall good\x85\r\n"
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(hostile, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = build(
            WebhookSinkConfig(url=HttpUrl.parse(f"http://127.0.0.1:{port}/hook"), timeout=5.0)
        )
        assert isinstance(sink, WebhookSink)
        try:
            await sink.send_records([{"type": "event", "daemon": "sshd"}])
        except (TransientSinkError, PermanentSinkError) as exc:
            return str(exc)
        finally:
            server.close()
        raise AssertionError("a 503 was taken for success")

    message = asyncio.run(scenario())
    assert "503" in message
    assert message.isprintable(), repr(message)


def test_shutdown_closes_gracefully_but_never_waits_on_a_stalled_collector() -> None:
    async def scenario() -> float:
        server, port = await stalled_collector()
        sink = build(replace_syslog(address=("127.0.0.1", port), protocol="tcp", timeout=0.3))
        assert isinstance(sink, SyslogSink)
        big: dict[str, object] = {"type": "event", "daemon": "sshd", "client": "x" * 250}
        with contextlib.suppress(TransientSinkError):
            for _ in range(40):
                await sink.send_records([big] * 500)
        await sink.send_records([{"type": "event", "daemon": "sshd"}])  # a fresh connection
        start = time.monotonic()
        await sink.aclose()
        server.close()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 2.0


def test_a_header_given_twice_in_different_case_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrapalert.toml"
    path.write_text(
        '[[sink]]\ntype = "webhook"\nurl = "https://hooks.example/x"\n'
        'headers = { Authorization = "Bearer a", authorization = "Bearer b" }\n' + NO_DIGESTS
    )
    with pytest.raises(ConfigError, match="given twice"):
        config.load(path)


def test_collector_connections_probe_for_a_vanished_peer() -> None:
    """Keepalive and a user timeout on the collector connection: a peer dropped by a
    firewall is noticed in about a minute, not after the kernel's 15."""

    async def scenario() -> tuple[int, int]:
        server = await asyncio.start_server(lambda _r, _w: asyncio.sleep(3600), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = build(replace_syslog(address=("127.0.0.1", port), protocol="tcp", timeout=2.0))
        assert isinstance(sink, SyslogSink)
        await sink.send_records([{"type": "event", "daemon": "sshd"}])
        assert sink._stream is not None
        sock = sink._stream[1].get_extra_info("socket")
        options = (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )
        await sink.aclose()
        server.close()
        return options

    assert asyncio.run(scenario()) == (1, 60_000)


def test_two_senders_share_one_connection_and_never_interleave_frames() -> None:
    """The worker and `test-alert` may send at once: one connection, whole frames."""

    async def scenario() -> tuple[int, bytes]:
        received = bytearray()
        connections = 0

        async def collector(reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            received.extend(await reader.read())

        server = await asyncio.start_server(collector, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = build(replace_syslog(address=("127.0.0.1", port), protocol="tcp", timeout=5.0))
        assert isinstance(sink, SyslogSink)
        batch = [{"type": "event", "daemon": f"d{i}", "client": "c" * 200} for i in range(300)]
        await asyncio.gather(sink.send_records(batch), sink.send_records(batch))  # type: ignore[arg-type]
        await sink.aclose()
        await asyncio.sleep(0.2)
        server.close()
        return connections, bytes(received)

    connections, data = asyncio.run(scenario())
    assert connections == 1
    frames = 0
    while data:  # RFC 6587 octet counting: "LEN SP MSG", back to back
        length, _, rest = data.partition(b" ")
        message, data = rest[: int(length)], rest[int(length) :]
        assert message.startswith(b"<"), message[:40]
        frames += 1
    assert frames == 600


def test_an_https_url_on_a_plain_http_port_is_a_config_problem() -> None:
    async def scenario() -> Exception:
        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = build(
            WebhookSinkConfig(url=HttpUrl.parse(f"https://127.0.0.1:{port}/hook"), timeout=5.0)
        )
        assert isinstance(sink, WebhookSink)
        try:
            await sink.send_records([{"type": "event", "daemon": "sshd"}])
        except (TransientSinkError, PermanentSinkError) as exc:
            return exc
        finally:
            server.close()
        raise AssertionError("a plain-HTTP server took a TLS request")

    error = asyncio.run(scenario())
    assert isinstance(error, PermanentSinkError), error
    assert "does not speak TLS" in str(error)
