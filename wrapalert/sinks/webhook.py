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
import socket

from wrapalert.config import WebhookSinkConfig
from wrapalert.sinks.http import Target, post

VERSION = 1  # of the body's layout: a change that breaks readers bumps it


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
