"""Real Alertmanager peers for the fleet tests: one, or a gossiping pair (PLATFORM.md's
recipe), behind `--web.config.file` basic auth (a bcrypt hash made by libxcrypt, which
both Debian releases ship: Python 3.13 has no `crypt` module) and, with a certificate,
TLS. They run in the test's own network namespace or, for daemons whose nftables sinks
live in a private one, inside that (`nftns.Netns`), where the test asks them over HTTP
through a small client started in it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

from helpers import PYTHON, free_port, require, wait_until
from nftns import Netns

BINARY = "prometheus-alertmanager"
USER = "wrapalert"
PASSWORD = "s3cret fleet password"  # noqa: S105 - the test cluster's own
# Every alert goes to a receiver that notifies nobody: the tests read the API.
ROUTES = "route:\n  receiver: quiet\nreceivers:\n  - name: quiet\n"

# An HTTP request from inside a network namespace: argv method, url, user, password, CA
# file ("" for none), the body on stdin; prints the status, a newline, the body.
CLIENT = (
    "import base64, ssl, sys, urllib.request, urllib.error\n"
    "method, url, user, pw, ca = sys.argv[1:6]\n"
    "body = sys.stdin.buffer.read() or None\n"
    "req = urllib.request.Request(url, data=body, method=method)\n"
    "req.add_header('Content-Type', 'application/json')\n"
    "if user:\n"
    "    token = base64.b64encode(f'{user}:{pw}'.encode()).decode()\n"
    "    req.add_header('Authorization', 'Basic ' + token)\n"
    "ctx = ssl.create_default_context(cafile=ca) if ca else None\n"
    "try:\n"
    "    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:\n"
    "        status, data = r.status, r.read()\n"
    "except urllib.error.HTTPError as e:\n"
    "    status, data = e.code, e.read()\n"
    "except OSError as e:\n"
    "    status, data = 0, str(e).encode()\n"
    "sys.stdout.buffer.write(str(status).encode() + b'\\n' + data)\n"
)


def require_alertmanager() -> None:
    require(shutil.which(BINARY) is not None, f"{BINARY} not found (apt-get install {BINARY})")


def bcrypt(password: str, cost: int = 4) -> str:
    """A bcrypt hash of `password`, as Alertmanager's basic_auth_users takes it (cost 4:
    the least, so each checked request stays fast)."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", cost, None, 0)
    hashed = lib.crypt(password.encode(), salt)
    assert hashed is not None
    assert hashed.startswith(b"$2b$"), hashed
    return str(hashed.decode())


def web_config(base: Path, *, cert: Path | None = None, key: Path | None = None) -> Path:
    """A --web.config.file with basic auth for USER/PASSWORD (and TLS with `cert`)."""
    text = f"basic_auth_users:\n  {USER}: '{bcrypt(PASSWORD)}'\n"
    if cert is not None and key is not None:
        text += f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
    path = base / "web.yml"
    path.write_text(text)
    return path


def password_file(base: Path, mode: int = 0o600) -> Path:
    path = base / "am-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def make_ca(base: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A self-signed CA made by openssl, and a server certificate it signed for `host` (an
    IP address): (ca.crt, server.crt, server.key)."""
    require(shutil.which("openssl") is not None, "openssl not found (apt-get install openssl)")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=base, check=True, capture_output=True)

    # The extensions RFC 5280 asks for: Python 3.13 verifies with VERIFY_X509_STRICT
    # (Debian 13), which refuses a CA without keyUsage and a leaf without an authority
    # key identifier.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=wrapalert test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (base / "san.cnf").write_text(
        f"subjectAltName = IP:{host}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
            "-out", "server.crt")  # fmt: skip
    return base / "ca.crt", base / "server.crt", base / "server.key"


class Peer:
    """One Alertmanager on 127.0.0.1 (of `ns`, when given), behind `web` (auth, TLS)."""

    def __init__(
        self,
        base: Path,
        web: Path,
        *,
        ns: Netns | None = None,
        ports: tuple[int, int, int] | None = None,  # web, own cluster port, the other's
        tls: bool = False,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        (base / "alertmanager.yml").write_text(ROUTES)
        self.ns = ns
        self.port = ports[0] if ports else free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = base / "alertmanager.log"
        cluster = (
            [
                f"--cluster.listen-address=127.0.0.1:{ports[1]}",
                f"--cluster.peer=127.0.0.1:{ports[2]}",
                "--cluster.settle-timeout=2s",
                "--cluster.peer-timeout=2s",
            ]
            if ports
            else ["--cluster.listen-address="]
        )
        prefix = ["nsenter", "-t", str(ns.pid), "-n"] if ns is not None else []
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    BINARY,
                    f"--config.file={base / 'alertmanager.yml'}",
                    f"--storage.path={base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.config.file={web}",
                    *cluster,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


class Api:
    """HTTP to the peers, from inside their namespace; with the fleet's credentials unless
    told otherwise."""

    def __init__(self, ns: Netns | None, ca: Path | None = None) -> None:
        self.ns = ns
        self.ca = ca

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        *,
        auth: tuple[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body); status 0 when no HTTP answer came (the error in the body)."""
        user, pw = auth if auth is not None else (USER, PASSWORD)
        if self.ns is None:
            return _request(method, url, body, user, pw, ca=self.ca)
        done = subprocess.run(
            ["nsenter", "-t", str(self.ns.pid), "-n", PYTHON, "-c", CLIENT, method, url, user, pw,
             str(self.ca or "")],
            input=body or b"",
            capture_output=True,
            timeout=20,
            check=True,
        )  # fmt: skip
        status, _, data = done.stdout.partition(b"\n")
        return int(status), data

    def post(self, peer: Peer, alerts: list[dict[str, Any]], **kw: Any) -> int:
        status, _ = self.request(
            "POST", f"{peer.url}/api/v2/alerts", json.dumps(alerts).encode(), **kw
        )
        return status

    def alerts(self, peer: Peer, *matchers: str) -> list[dict[str, Any]]:
        """The active alerts `peer` holds that match every `matchers` (e.g. 'host="a"')."""
        query = urllib.parse.urlencode([("active", "true"), *(("filter", m) for m in matchers)])
        status, data = self.request("GET", f"{peer.url}/api/v2/alerts?{query}")
        assert status == 200, (status, data[:200])
        found: list[dict[str, Any]] = json.loads(data)
        return found

    def cluster_size(self, peer: Peer) -> int:
        """How many members `peer` sees in a ready cluster (0 until then)."""
        assert peer.alive(), peer.log.read_text()
        status, data = self.request("GET", f"{peer.url}/api/v2/status")
        if status != 200:
            return 0
        cluster = json.loads(data).get("cluster", {})
        return len(cluster.get("peers") or []) if cluster.get("status") == "ready" else 0

    def ready(self, peer: Peer) -> bool:
        assert peer.alive(), peer.log.read_text()
        status, _ = self.request("GET", f"{peer.url}/-/ready")
        return status == 200


def _request(
    method: str, url: str, body: bytes | None, user: str, pw: str, *, ca: Path | None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - our own URL
    req.add_header("Content-Type", "application/json")
    if user:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{pw}".encode()).decode())
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as reply:  # noqa: S310
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc).encode()


class Cluster:
    """Two gossiping peers in `ns` (or the test's namespace), behind basic auth."""

    def __init__(self, base: Path, ns: Netns | None = None) -> None:
        require_alertmanager()
        self.api = Api(ns)
        base.mkdir(parents=True, exist_ok=True)
        web = web_config(base)
        if ns is not None:  # a fresh namespace: every port is free
            ports = [(19093, 19193, 19194), (19094, 19194, 19193)]
        else:
            a, b = free_port(), free_port()
            ports = [(free_port(), a, b), (free_port(), b, a)]
        self.peers = [Peer(base / f"peer{i}", web, ns=ns, ports=ports[i]) for i in range(2)]
        try:
            wait_until(
                lambda: all(self.api.cluster_size(p) == 2 for p in self.peers),
                60,
                "a ready two-peer cluster",
            )
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> str:
        """The peers as a TOML list."""
        return "[" + ", ".join(f'"{p.url}"' for p in self.peers) + "]"

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()
