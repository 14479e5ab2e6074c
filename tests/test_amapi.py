"""The Alertmanager API client alone (sinks/amapi.py, with sinks/http.py's GET): basic auth
from a password file only its owners may read, a bounded GET, and TLS verified by a CA
of the config's own, against servers of the test's and a real Alertmanager."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from amcluster import PASSWORD, USER, Api, Peer, make_ca, require_alertmanager, web_config
from helpers import HttpServer, Reply, wait_until

from wrapalert import config
from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.sinks.alertmanager import AlertmanagerSink, AlertmanagerSinkConfig
from wrapalert.sinks.amapi import Access, Peers, read_password
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.http import ReplyTooLargeError


def secret(tmp_path: Path, text: str = "pw\n", mode: int = 0o600) -> Path:
    path = tmp_path / "password"
    path.write_text(text)
    path.chmod(mode)
    return path


def peers(*urls: str, password: Path | None = None, ca: Path | None = None) -> Peers:
    user = USER if password is not None else None
    return Peers.connect(Access(tuple(HttpUrl.parse(u) for u in urls), 5.0, user, password, ca))


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o660])
def test_a_password_file_its_owner_and_group_keep_is_read(tmp_path: Path, mode: int) -> None:
    """Its first line, without the line end (CRLF too), as bytes."""
    assert read_password(secret(tmp_path, "pw\r\nsecond line\n", mode)) == b"pw"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601, 0o666])
def test_a_password_file_others_may_touch_is_refused(tmp_path: Path, mode: int) -> None:
    """Readable, writable or runnable by others: refused, naming the file and the fix."""
    path = secret(tmp_path, mode=mode)
    with pytest.raises(ConfigError, match=rf"password_file {path}: other users .*chmod o-rwx"):
        read_password(path)


@pytest.mark.parametrize(
    ("text", "problem"), [("", "empty"), ("\nsecond\n", "empty"), ("x" * 5000, "longer than")]
)
def test_an_empty_or_huge_password_file_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        read_password(secret(tmp_path, text))


def test_a_missing_password_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        read_password(tmp_path / "nothing")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_password(tmp_path / "dir")


def test_the_sink_is_not_built_with_a_password_file_others_read(tmp_path: Path) -> None:
    """The daemon reads the file when it builds the sink (at start, at each reload): a
    world-readable one stops that build, with the fix in the message."""
    cfg = AlertmanagerSinkConfig(username=USER, password_file=secret(tmp_path, mode=0o644))
    with pytest.raises(ConfigError, match="chmod o-rwx"):
        AlertmanagerSink(cfg)


def test_basic_auth_goes_with_every_post_and_get(tmp_path: Path) -> None:
    """The Authorization header of USER and the file's password; never without one."""
    with HttpServer() as server:
        server.reply = Reply(200, b"[]")
        api = peers(server.url(""), password=secret(tmp_path, f"{PASSWORD}\n"))
        (peer,) = api.peers
        assert asyncio.run(api.post(b"[]")) == [None]
        assert asyncio.run(api.get_alerts(peer, ['alertname="X"'], limit=100)) == b"[]"
        header = "Basic d3JhcGFsZXJ0OnMzY3JldCBmbGVldCBwYXNzd29yZA=="
        assert [r.headers["Authorization"] for r in server.requests] == [header, header]
        assert "Authorization" not in repr(api)  # kept out of reprs (and so of logs)


def test_a_get_reads_the_whole_body_up_to_its_limit(tmp_path: Path) -> None:
    """A body by Content-Length or chunked is read whole; one past the limit is refused
    once the limit is passed, a transient failure of that peer."""
    del tmp_path
    with HttpServer() as server:
        api = peers(server.url(""))
        (peer,) = api.peers
        server.reply = Reply(200, b"x" * 1000)
        assert asyncio.run(api.get_alerts(peer, [], limit=1000)) == b"x" * 1000
        with pytest.raises(ReplyTooLargeError, match="reply larger than 999 bytes"):
            asyncio.run(api.get_alerts(peer, [], limit=999))
    for chunks, limit, fits in (([b"ab", b"cde"], 5, True), ([b"ab", b"cde"], 4, False)):
        with chunked_server(chunks) as port:
            (peer,) = peers(f"http://127.0.0.1:{port}").peers
            call = Peers((peer,)).get_alerts(peer, [], limit=limit)
            if fits:
                assert asyncio.run(call) == b"abcde"
            else:
                with pytest.raises(TransientSinkError, match="reply larger"):
                    asyncio.run(call)


class chunked_server:  # noqa: N801 - used as a context manager, named for what it serves
    """A one-shot HTTP server answering 200 with `chunks` as chunked transfer encoding."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()
        self.thread.join(5)

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in self.chunks) + b"0\r\n\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"ca_file {bad}"):
        peers("https://127.0.0.1:1", ca=bad)


def test_config_keeps_basic_auth_whole_and_a_ca_for_https() -> None:
    """username without password_file (or the reverse) and a ca_file without an https
    peer are config errors with their line."""
    table = '[[sink]]\ntype = "alertmanager"\nurls = ["http://am:9093"]\n'
    with pytest.raises(ConfigError, match=r":1: \[\[sink\]\] #1 password_file: missing"):
        config.loads(f'{table}username = "wa"\n')
    with pytest.raises(ConfigError, match=r"username: missing"):
        config.loads(f'{table}password_file = "/etc/wrapalert/am-password"\n')
    with pytest.raises(ConfigError, match="ca_file: verifies https:// peers, and urls has none"):
        config.loads(f'{table}ca_file = "/etc/wrapalert/ca.pem"\n')
    with pytest.raises(ConfigError, match="username: 'a:b'"):
        config.loads(f'{table}username = "a:b"\npassword_file = "/x"\n')


@pytest.fixture
def tls_alertmanager(tmp_path: Path) -> Iterator[tuple[Peer, Path]]:
    """A real Alertmanager over https with basic auth, its certificate signed by a CA
    openssl made here; and that CA's certificate."""
    require_alertmanager()
    ca, cert, key = make_ca(tmp_path)
    peer = Peer(tmp_path / "am", web_config(tmp_path, cert=cert, key=key), tls=True)
    try:
        api = Api(None, ca)
        wait_until(lambda: api.ready(peer), 30, "alertmanager over https")
        yield peer, ca
    finally:
        peer.stop()


@pytest.mark.system
def test_https_with_the_configs_ca_reaches_a_real_alertmanager(
    tmp_path: Path, tls_alertmanager: tuple[Peer, Path]
) -> None:
    """With ca_file the post and the look go through TLS and basic auth; without it the
    system's CAs do not know the peer's issuer: a permanent error saying so; without
    the password the peer says 401, also permanent."""
    peer, ca = tls_alertmanager
    alert = b'[{"labels": {"alertname": "WrapalertBan", "host": "h", "client_addr": "192.0.2.1"}}]'
    password = secret(tmp_path, f"{PASSWORD}\n")
    good = peers(peer.url, password=password, ca=ca)
    assert asyncio.run(good.post(alert)) == [None]
    body = asyncio.run(good.get_alerts(good.peers[0], ['host="h"'], limit=100_000))
    assert b'"client_addr":"192.0.2.1"' in body
    (untrusted,) = asyncio.run(peers(peer.url, password=password).post(alert))
    assert isinstance(untrusted, PermanentSinkError)
    assert str(untrusted).endswith("/api/v2/alerts: unable to get local issuer certificate")
    (refused,) = asyncio.run(peers(peer.url, ca=ca).post(alert))
    assert isinstance(refused, PermanentSinkError)
    assert "HTTP 401" in str(refused)


@pytest.mark.system
def test_an_ssl_context_trusts_the_ca_file_alone(tmp_path: Path) -> None:
    """ca_file replaces the system's CAs (a private CA; as Alertmanager's own tls config):
    the context holds that one certificate."""
    ca, _, _ = make_ca(tmp_path)
    (peer,) = peers("https://127.0.0.1:9093", ca=ca).peers
    context = peer.alerts.context
    assert isinstance(context, ssl.SSLContext)
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "wrapalert test CA"),),)
    ]
