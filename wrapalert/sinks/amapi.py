"""The Alertmanager API of one cluster, as an alertmanager sink's keys name it: every peer
(`urls`), HTTP basic auth (`username`, `password_file`) and the CA that verifies an
https peer (`ca_file`), matching what Alertmanager's `--web.config.file` checks.

Three callers share it: the sink's records (`post`), the heartbeat
(daemon/heartbeat.py, `post`) and the fleet (daemon/fleet.py: `post` of this
host's bans, `get` of the peers' ban alerts). Alertmanager does not pass alerts
between peers, so a POST goes to every peer at once and each peer's outcome is
a value (one failing never cancels the others); a GET asks one peer.

The password is read when the client is built (at start, at each reload): a file
others may read or write is refused, since whoever holds it can ban across the
fleet. Neither the password nor the Authorization header ever appears in a
message or a log line; messages name the peer by its origin and path.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrapalert.confparse import ConfigError, HttpUrl
from wrapalert.sinks.base import PermanentSinkError, SinkError
from wrapalert.sinks.http import Target, get, post, tls_context

API_PATH = "/api/v2/alerts"
MAX_PASSWORD = 4096  # bytes: a password file is a line, not a document


@dataclass(frozen=True)
class Access:
    """How to reach the peers: the keys as the config gave them (nothing read yet)."""

    urls: tuple[HttpUrl, ...]
    timeout: float
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None


def read_password(path: Path) -> bytes:
    """The password in `path`: its first line, without the line end, as bytes (basic
    auth sends them as they are). ConfigError, naming
    the file and the fix, when it is missing, unreadable, not a regular file, empty, too
    long, or open to other users (whoever reads it can post bans as this host)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"password_file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"password_file {path}: not a regular file")
        if st.st_mode & 0o007:
            raise ConfigError(
                f"password_file {path}: other users may read or write it (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): chmod o-rwx {path} (owner and group "
                "wrapalert only, or systemd's LoadCredential=)"
            )
        data = os.read(fd, MAX_PASSWORD + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD:
        raise ConfigError(f"password_file {path}: longer than {MAX_PASSWORD} bytes")
    password = data.partition(b"\n")[0].removesuffix(b"\r")
    if not password:
        raise ConfigError(f"password_file {path}: empty (its first line is the password)")
    return password


@dataclass(frozen=True)
class Peer:
    """One Alertmanager: where its alerts API is, and how messages name it."""

    url: HttpUrl  # as configured
    alerts: Target  # POST and GET /api/v2/alerts

    @property
    def name(self) -> str:
        return self.url.text


@dataclass(frozen=True)
class Peers:
    """Every peer of one cluster, with the credentials and CA read once (`connect`)."""

    peers: tuple[Peer, ...]
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def connect(cls, access: Access) -> Peers:
        """Read the password and the CA now; ConfigError names what is wrong."""
        context = None
        if access.ca_file is not None:
            try:
                context = tls_context(access.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"ca_file {access.ca_file}: {exc}") from None
        headers: tuple[tuple[str, str], ...] = ()
        if access.username is not None and access.password_file is not None:
            password = read_password(access.password_file)
            token = base64.b64encode(access.username.encode() + b":" + password).decode()
            headers = (("Authorization", f"Basic {token}"),)
        peers = tuple(
            Peer(url, Target.of(url.under(API_PATH), timeout=access.timeout, context=context))
            for url in access.urls
        )
        return cls(peers, headers)

    async def post(self, body: bytes) -> list[SinkError | None]:
        """POST `body` (a JSON array of alerts) to every peer at once: each one's outcome,
        in the order of the peers (None: it took them)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._post(peer.alerts, body)) for peer in self.peers]
        return [task.result() for task in tasks]

    async def post_one(self, peer: Peer, body: bytes) -> SinkError | None:
        """POST `body` to one peer: its outcome (None: it took them)."""
        return await self._post(peer.alerts, body)

    async def _post(self, target: Target, body: bytes) -> SinkError | None:
        """One peer's outcome as a value: a failure must not cancel the other peers."""
        try:
            await post(target, body, headers=self.headers)
        except SinkError as error:
            return error
        except Exception as error:  # noqa: BLE001 - e.g. UnicodeError from the resolver
            return PermanentSinkError(f"{target.display}: {type(error).__name__}: {error}")
        return None

    async def get_alerts(self, peer: Peer, filters: Sequence[str], *, limit: int) -> bytes:
        """The active alerts `peer` holds that match every one of `filters` (Alertmanager's
        matchers, e.g. 'alertname="WrapalertBan"'): its JSON, at most `limit` bytes.
        SinkError when the peer cannot answer."""
        query = [("active", "true"), *(("filter", f) for f in filters)]
        url = peer.url.under(f"{API_PATH}?{urllib.parse.urlencode(query)}")
        target = Target(url, peer.alerts.display, peer.alerts.timeout, peer.alerts.context)
        try:
            return await get(target, limit=limit, headers=self.headers)
        except SinkError:
            raise
        except Exception as error:  # noqa: BLE001 - as in _post
            raise PermanentSinkError(f"{target.display}: {type(error).__name__}: {error}") from None
