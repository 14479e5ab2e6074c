"""webhook sink and the shared HTTP client, against real HTTP servers on loopback ports."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    NO_DIGESTS,
    HttpServer,
    Reply,
    free_port,
    report_through_daemon,
    require,
    send_records,
    write_config,
)

from wrapalert import config
from wrapalert.confparse import HttpUrl
from wrapalert.sinks import build
from wrapalert.sinks.base import EventSink, PermanentSinkError, TransientSinkError
from wrapalert.sinks.http import MESSAGE_CHARS
from wrapalert.sinks.webhook import WebhookSink, WebhookSinkConfig

RECORDS: list[dict[str, object]] = [
    {"type": "event", "daemon": "sshd", "client_addr": "192.0.2.1", "trusted": True, "uid": 0},
    {"type": "held", "events": 7, "first": 1.5, "last": 2.5, "daemons": {"sshd": 7}},
]


@pytest.fixture
def httpd() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


def send(url: str, records: list[dict[str, object]] | None = None, **kw: object) -> None:
    cfg = WebhookSinkConfig(url=HttpUrl.parse(url), **kw)  # type: ignore[arg-type]
    send_records(WebhookSink(cfg, host="web1"), *(RECORDS if records is None else records))


def test_posts_version_host_and_records_as_json(httpd: HttpServer) -> None:
    """One batch is one POST of {"version": 1, "host", "records"} to the URL's path and query."""
    send(httpd.url("/hooks/abc?channel=ops"))
    (request,) = httpd.requests
    assert (request.method, request.path) == ("POST", "/hooks/abc?channel=ops")
    assert json.loads(request.body) == {"version": 1, "host": "web1", "records": RECORDS}


def test_sends_json_content_type_user_agent_and_host(httpd: HttpServer) -> None:
    """The request says what it is and who sent it: application/json, wrapalert/VERSION."""
    send(httpd.url())
    headers = httpd.requests[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"wrapalert/{importlib.metadata.version('wrapalert')}"
    assert headers["Host"] == f"127.0.0.1:{httpd.port}"


def test_sends_the_configured_extra_headers(httpd: HttpServer) -> None:
    """Extra headers (a bearer token, say) go out as configured, next to ours."""
    send(httpd.url(), headers=(("Authorization", "Bearer s3cret"), ("X-Team", "ops")))
    headers = httpd.requests[0].headers
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Team"] == "ops"
    assert headers.get_all("Content-Type") == ["application/json"]


def test_hostile_values_stay_inside_the_json(httpd: HttpServer) -> None:
    """Quotes, newlines, non-ASCII, a lone surrogate and very long values arrive as data."""
    hostile = 'a"}],"x":1,\n\r\x00é☃\udcff' + "z" * 5000
    send(httpd.url(), [{"type": "event", "daemon": hostile}])
    record = json.loads(httpd.requests[0].body)["records"][0]
    assert record == {"type": "event", "daemon": hostile}


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_is_delivered(httpd: HttpServer, status: int) -> None:
    """Any 2xx answer is a delivery, with or without a body."""
    httpd.reply = Reply(status, b'{"ok": true}')
    send(httpd.url())
    assert len(httpd.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_trouble_is_transient(httpd: HttpServer, status: int) -> None:
    """5xx, 429 (slow down) and 408 are worth retrying: transient, naming the status."""
    httpd.reply = Reply(status, b"busy, try later")
    with pytest.raises(TransientSinkError, match=f"HTTP {status} .*: busy, try later"):
        send(httpd.url())


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_refusal_is_permanent_with_the_servers_words(httpd: HttpServer, status: int) -> None:
    """Other 4xx will not change on retry: permanent, with what the server said."""
    httpd.reply = Reply(status, b'{"error": "no such channel"}')
    words = re.escape('{"error": "no such channel"}')
    with pytest.raises(PermanentSinkError, match=f"HTTP {status} .*: {words}"):
        send(httpd.url())


def test_a_long_error_body_is_cut_short(httpd: HttpServer) -> None:
    """A huge error page becomes a bounded one-line message."""
    httpd.reply = Reply(400, b"<html>\n" + b"x" * 100_000)
    with pytest.raises(PermanentSinkError) as info:
        send(httpd.url())
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < MESSAGE_CHARS + 100


def test_a_redirect_is_permanent_and_never_turned_into_a_get(httpd: HttpServer) -> None:
    """A 302 is not followed (urllib would re-send it as a body-less GET): permanent, naming
    the new place, and the server sees one POST only."""
    httpd.reply = Reply(302, headers={"Location": "http://elsewhere.example/hook"})
    with pytest.raises(PermanentSinkError, match=r"302 .*elsewhere\.example.*not followed"):
        send(httpd.url())
    assert [r.method for r in httpd.requests] == ["POST"]


def test_the_urls_path_and_query_stay_out_of_messages(httpd: HttpServer) -> None:
    """Chat webhooks carry their secret in the path: errors name only scheme, host and port."""
    httpd.reply = Reply(500)
    with pytest.raises(TransientSinkError) as info:
        send(httpd.url("/services/T0/B0/s3cret?token=s3cret"))
    assert "s3cret" not in str(info.value)
    assert f"http://127.0.0.1:{httpd.port}" in str(info.value)


def test_a_server_that_never_answers_is_transient_within_the_timeout(httpd: HttpServer) -> None:
    """Connected, request sent, no answer: transient once `timeout` has passed, not later."""
    httpd.reply = Reply(stall=True)
    start = time.monotonic()
    with pytest.raises(TransientSinkError, match=r"no answer within 0\.5 s"):
        send(httpd.url(), timeout=0.5)
    assert 0.4 < time.monotonic() - start < 2.5
    assert len(httpd.requests) == 1


def test_a_refused_connection_is_transient_at_once() -> None:
    """Nobody listening: transient, without waiting for the timeout."""
    start = time.monotonic()
    with pytest.raises(TransientSinkError, match="refused"):
        send(f"http://127.0.0.1:{free_port()}/hook", timeout=30)
    assert time.monotonic() - start < 2


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def post_to_raw(answer: Answer) -> None:
    """Send RECORDS to a real asyncio TCP server whose every byte `answer` writes by hand."""

    async def scenario() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            sink = WebhookSink(
                WebhookSinkConfig(url=HttpUrl.parse(f"http://127.0.0.1:{port}/"), timeout=5)
            )
            await sink.send_records(RECORDS)

    asyncio.run(scenario())


def test_an_answer_that_is_not_http_is_permanent() -> None:
    """A URL that points at another kind of server (an SMTP port, say) cannot be retried
    into working: permanent, quoting what it said."""

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.example ESMTP ready\r\n")
        await writer.drain()
        writer.close()

    with pytest.raises(PermanentSinkError, match=r"not an HTTP reply: '220 mx\.example"):
        post_to_raw(greet)


def test_a_connection_closed_before_the_reply_is_transient() -> None:
    """The server takes the request and hangs up: transient (a restart, a proxy hiccup)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    with pytest.raises(TransientSinkError, match="closed before a reply"):
        post_to_raw(hang_up)


def test_a_chunked_error_body_is_read_for_the_message() -> None:
    """An error body in chunks (no Content-Length) is decoded into the message."""

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\nbad toke\r\n1;x=y\r\nn\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    with pytest.raises(PermanentSinkError, match=r"HTTP 403 Forbidden: bad token$"):
        post_to_raw(chunked)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl): (cert, key)."""
    require(shutil.which("openssl") is not None, "openssl is not installed")
    base = tmp_path_factory.mktemp("tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def tls_server(certificate: tuple[Path, Path]) -> HttpServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return HttpServer(tls=context)


@pytest.mark.system
def test_https_to_a_trusted_certificate_delivers(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """https verifies the server against the system's CAs (here SSL_CERT_FILE) and posts."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with tls_server(certificate) as server:
        send(server.url())
        assert json.loads(server.requests[0].body)["records"] == RECORDS


@pytest.mark.system
def test_https_to_an_untrusted_certificate_is_permanent(certificate: tuple[Path, Path]) -> None:
    """A certificate no CA vouches for will not become trusted by retrying: permanent."""
    with (
        tls_server(certificate) as server,
        pytest.raises(PermanentSinkError, match="certificate"),
    ):
        send(server.url())
    assert server.requests == []


def test_a_line_break_in_a_header_never_reaches_the_wire(httpd: HttpServer) -> None:
    """Even past the config check, a header value with CR/LF is refused before sending."""
    with pytest.raises(PermanentSinkError, match="line break"):
        send(httpd.url(), headers=(("X-Note", "a\r\nX-Forged: 1"),))
    assert httpd.requests == []


@pytest.mark.parametrize(
    ("url", "host_header", "path"),
    [
        ("http://[::1]:8080/x?y=1", "[::1]:8080", "/x?y=1"),
        ("https://chat.example", "chat.example", "/"),
        ("http://chat.example:80/a/", "chat.example", "/a/"),
        ("https://chat.example:8443/", "chat.example:8443", "/"),
    ],
)
def test_the_host_header_and_path_come_from_the_url(url: str, host_header: str, path: str) -> None:
    """Host carries the port only when it is not the scheme's own, brackets an IPv6 address,
    and an empty path is "/"."""
    parsed = HttpUrl.parse(url)
    assert (parsed.host_header, parsed.path) == (host_header, path)


def test_build_makes_a_forwarding_sink() -> None:
    """A [[sink]] type = "webhook" table builds a sink the daemon forwards records to."""
    cfg = config.loads(
        '[[sink]]\ntype = "webhook"\nurl = "https://chat.example/hook"\n' + NO_DIGESTS
    )
    assert isinstance(build(cfg.sinks[0]), EventSink)


def test_daemon_posts_the_events_a_client_sends(sockdir: Path, httpd: HttpServer) -> None:
    """End to end: with a webhook sink, the events two clients report reach the URL as
    records, with their trust, next to the digests."""
    path = write_config(
        sockdir,
        sinks=f"""
[[sink]]
type = "maildir"
path = "{sockdir}/Maildir"

[[sink]]
type = "webhook"
url = "{httpd.url()}"
headers = {{ Authorization = "Bearer t0ken" }}
timeout = "5s"
""",
    )
    cfg = config.load(path)

    report_through_daemon(cfg, ("192.0.2.1", "192.0.2.2"), "n=evil.example")
    assert all(r.headers["Authorization"] == "Bearer t0ken" for r in httpd.requests)
    bodies = [json.loads(r.body) for r in httpd.requests]
    records = [record for b in bodies for record in b["records"]]
    assert [r["client_addr"] for r in records] == ["192.0.2.1", "192.0.2.2"]
    assert all(r["type"] == "event" and r["trusted"] is True for r in records)
    assert records[0]["client_name"] == "evil.example"
    assert {b["version"] for b in bodies} == {1}
