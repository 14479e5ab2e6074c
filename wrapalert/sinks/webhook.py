"""webhook sink: each batch of records as one JSON POST, for chat and paging tools.

The body is `{"version": 1, "host": "<this host>", "records": [...]}`, the
records exactly as the jsonl sink writes them (type "event" or "held"), with
`Content-Type: application/json`, `User-Agent: wrapalert/VERSION` and the
configured extra `headers` (an Authorization token, say). The URL's path
and query are kept out of messages and logs: chat webhooks carry their
secret there. Errors map as in wrapalert.sinks.http.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from wrapalert.confparse import Key, KeyDocs, Table, rate, url_problem
from wrapalert.sinks.http import Target, post
from wrapalert.sinks.registry import EventSinkType

VERSION = 1  # of the body's layout: a change that breaks readers bumps it
# RFC 9110 token: a header field name.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the request (wrapalert.sinks.http sets them) or that the sink sets.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class WebhookSinkConfig:
    """A forwarding sink: records as one JSON POST per batch, for chat and paging tools."""

    url: str
    name: str = "webhook"
    timeout: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, e.g. Authorization
    events_per_second: float | None = None  # None: [limits] events_per_second


def parse(t: Table) -> WebhookSinkConfig:
    url = t.get("url", None, str)
    if url is None:
        raise t.error("url", "missing; the webhook needs an http:// or https:// URL")
    if problem := url_problem(url):
        raise t.error("url", f"{url!r} {problem}")
    headers = t.get("headers", {}, dict)
    lowered = [name.lower() for name in headers]
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise t.error("headers", f"{name!r} is not a header name")
        if lowered.count(name.lower()) > 1:  # header names ignore case: both would go
            raise t.error("headers", f"{name!r} is given twice (names ignore case)")
        if name.lower() in _OWN_HEADERS:
            raise t.error("headers", f"{name!r} is set by wrapalert")
        if not isinstance(value, str):
            raise t.error("headers", f"{name}: expected a string")
        # A line break would let the value start a header (or a body) of its own.
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise t.error("headers", f"{name}: holds a line break or control character")
        if not value.isascii():  # header bytes are latin-1 at best; ASCII is safe
            raise t.error("headers", f"{name}: use ASCII (encode the value)")
    return WebhookSinkConfig(
        url=url,
        name=t.get("name", "webhook", str),
        timeout=t.positive_duration("timeout", WebhookSinkConfig.timeout),
        headers=tuple(headers.items()),
        events_per_second=rate(t),
    )


def describe(cfg: WebhookSinkConfig) -> str:
    # Only where it goes: webhook URLs often carry their secret in the path.
    url = urlsplit(cfg.url)
    return f"webhook {url.scheme}://{url.netloc}/... (forwarding, JSON batches)"


class WebhookSink:
    """POSTs `{"version", "host", "records"}` to one URL per batch."""

    def __init__(self, cfg: WebhookSinkConfig, *, host: str | None = None) -> None:
        self.name = cfg.name
        self.target = Target.parse(cfg.url, timeout=cfg.timeout, redact=True)
        self.headers = cfg.headers
        self.host = host or socket.gethostname()

    async def send_records(self, records: list[dict[str, object]]) -> None:
        # ensure_ascii: any string, even a lone surrogate, leaves as a valid JSON escape.
        payload = {"version": VERSION, "host": self.host, "records": records}
        body = json.dumps(payload, separators=(",", ":")).encode()
        await post(self.target, body, headers=self.headers)


KEYS: KeyDocs = {
    "url": Key(
        "Where each batch of records is POSTed as JSON (http or https).",
        default="none: required",
        example="https://chat.example/hooks/wrapalert",
    ),
    "name": "The sink's name in status, routes and logs; unique among the sinks.",
    "timeout": "How long one POST may take.",
    "headers": Key('Extra request headers, e.g. { Authorization = "Bearer ..." }.', default="{}"),
    "events_per_second": Key(
        "Records this sink sends per second at most.",
        default="[limits] events_per_second",
    ),
}

SINK = EventSinkType(
    name="webhook",
    config=WebhookSinkConfig,
    parse=parse,
    describe=describe,
    build=WebhookSink,
    build_for_host=lambda cfg, host: WebhookSink(cfg, host=host),
    keys=KEYS,
)
