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

from wrapalert.confkeys import TIMEOUT, Pairs, Url, required, setting, sink_name, sink_rate
from wrapalert.confparse import HttpUrl
from wrapalert.sinks.http import Target, post
from wrapalert.sinks.registry import EventSinkType

VERSION = 1  # of the body's layout: a change that breaks readers bumps it
# RFC 9110 token: a header field name.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the request (wrapalert.sinks.http sets them) or that the sink sets.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def _headers(headers: tuple[tuple[str, object], ...]) -> tuple[tuple[str, str], ...]:
    lowered = [name.lower() for name, _ in headers]
    checked = []
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if lowered.count(name.lower()) > 1:  # header names ignore case: both would go
            raise ValueError(f"{name!r} is given twice (names ignore case)")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"{name!r} is set by wrapalert")
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string")  # noqa: TRY004 - the key's problem
        # A line break would let the value start a header (or a body) of its own.
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"{name}: holds a line break or control character")
        if not value.isascii():  # header bytes are latin-1 at best; ASCII is safe
            raise ValueError(f"{name}: use ASCII (encode the value)")
        checked.append((name, value))
    return tuple(checked)


@dataclass(frozen=True)
class WebhookSinkConfig:
    """A forwarding sink: records as one JSON POST per batch, for chat and paging tools."""

    url: HttpUrl = required(
        "Where each batch of records is POSTed as JSON (http or https).",
        Url(),
        missing="the webhook needs an http:// or https:// URL",
    )
    name: str = sink_name("webhook")
    timeout: float = setting(10.0, "How long one POST may take.", TIMEOUT)
    headers: tuple[tuple[str, str], ...] = setting(
        (), 'Extra request headers, e.g. { Authorization = "Bearer ..." }.', Pairs(), check=_headers
    )
    events_per_second: float | None = sink_rate()


def describe(cfg: WebhookSinkConfig) -> str:
    # Only where it goes: webhook URLs often carry their secret in the path.
    return f"webhook {cfg.url.origin}/... (forwarding, JSON batches)"


class WebhookSink:
    """POSTs `{"version", "host", "records"}` to one URL per batch."""

    def __init__(self, cfg: WebhookSinkConfig, *, host: str | None = None) -> None:
        self.name = cfg.name
        self.target = Target.of(cfg.url, timeout=cfg.timeout, redact=True)
        self.headers = cfg.headers
        self.host = host or socket.gethostname()

    async def send_records(self, records: list[dict[str, object]]) -> None:
        # ensure_ascii: any string, even a lone surrogate, leaves as a valid JSON escape.
        payload = {"version": VERSION, "host": self.host, "records": records}
        body = json.dumps(payload, separators=(",", ":")).encode()
        await post(self.target, body, headers=self.headers)


SINK = EventSinkType(
    name="webhook",
    config=WebhookSinkConfig,
    describe=describe,
    build=WebhookSink,
    build_for_host=lambda cfg, host: WebhookSink(cfg, host=host),
)
