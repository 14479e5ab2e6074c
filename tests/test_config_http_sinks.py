"""Configuration of the alertmanager and webhook sinks: defaults, and errors at file:line."""

from __future__ import annotations

import pytest
from helpers import NO_DIGESTS

from wrapalert import config
from wrapalert.confparse import ConfigError, HttpUrl, SinkConfig
from wrapalert.sinks.alertmanager import AlertmanagerSink, AlertmanagerSinkConfig
from wrapalert.sinks.webhook import WebhookSink, WebhookSinkConfig


def sink(table: str) -> SinkConfig:
    (cfg,) = config.loads(f"[[sink]]\n{table}\n{NO_DIGESTS}", "wa.toml").sinks
    return cfg


def test_alertmanager_defaults() -> None:
    """A bare alertmanager table posts to the local Alertmanager, 10 s timeout, alerts
    resolving 15 minutes after their last event."""
    cfg = sink('type = "alertmanager"')
    assert isinstance(cfg, AlertmanagerSinkConfig)
    assert cfg == AlertmanagerSinkConfig()
    assert [str(url) for url in cfg.urls] == ["http://127.0.0.1:9093"]
    assert (cfg.timeout, cfg.resolve_after, cfg.labels) == (10.0, 900.0, ())
    assert cfg.events_per_second is None


def test_alertmanager_takes_every_key() -> None:
    """urls, timeout, resolve_after, labels, events_per_second and name are read as written."""
    cfg = sink("""type = "alertmanager"
name = "fleet"
urls = ["http://am1:9093", "https://am2.example/prefix/"]
timeout = "3s"
resolve_after = "1h"
labels = { env = "prod", team = "sec" }
events_per_second = 20""")
    assert cfg == AlertmanagerSinkConfig(
        name="fleet",
        urls=(HttpUrl.parse("http://am1:9093"), HttpUrl.parse("https://am2.example/prefix/")),
        timeout=3.0,
        resolve_after=3600.0,
        labels=(("env", "prod"), ("team", "sec")),
        events_per_second=20.0,
    )


def test_webhook_takes_every_key() -> None:
    """url, timeout, headers, events_per_second and name are read as written."""
    cfg = sink("""type = "webhook"
name = "chat"
url = "https://chat.example/hooks/T0/B0?x=1"
timeout = 5
headers = { Authorization = "Bearer abc", X-Team = "ops" }
events_per_second = 2.5""")
    assert cfg == WebhookSinkConfig(
        url=HttpUrl.parse("https://chat.example/hooks/T0/B0?x=1"),
        name="chat",
        timeout=5.0,
        headers=(("Authorization", "Bearer abc"), ("X-Team", "ops")),
        events_per_second=2.5,
    )
    assert sink('type = "webhook"\nurl = "http://h/"') == WebhookSinkConfig(
        HttpUrl.parse("http://h/")
    )


def test_urls_reach_the_sinks_parsed() -> None:
    """A URL is parsed once, when the config is read: the sinks POST to the host, port and
    path config found (the alertmanager's API path after each URL's own)."""
    cfg = sink('type = "webhook"\nurl = "https://[2001:db8::7]:8443/hooks/T0?k=v"')
    assert isinstance(cfg, WebhookSinkConfig)
    assert (cfg.url.tls, cfg.url.host, cfg.url.port) == (True, "2001:db8::7", 8443)
    target = WebhookSink(cfg).target
    assert target.url is cfg.url
    assert (target.url.host_header, target.url.path) == ("[2001:db8::7]:8443", "/hooks/T0?k=v")
    assert target.display == "https://[2001:db8::7]:8443"  # the path holds the token
    am = sink('type = "alertmanager"\nurls = ["http://am1:9093/prefix/", "http://am2"]')
    assert isinstance(am, AlertmanagerSinkConfig)
    targets = [peer.alerts for peer in AlertmanagerSink(am).peers.peers]
    posts = [(t.url.host, t.url.port, t.url.path) for t in targets]
    assert posts == [("am1", 9093, "/prefix/api/v2/alerts"), ("am2", 80, "/api/v2/alerts")]


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('urls = ["ftp://am:9093"]', r"urls: 'ftp://am:9093' must start with http:// or https://"),
        ('urls = ["http:///x"]', "has no host"),
        ('urls = ["http://am :9093"]', "without spaces or control characters"),
        ('urls = ["http://am:9093\\n"]', "without spaces or control characters"),
        ('urls = ["http://am:99999"]', "is not a URL"),
        ('urls = ["http://user:pw@am:9093"]', "must not hold credentials"),
        ('urls = ["http://am:9093/?x=1"]', "must not have a \\?query"),
        ('urls = ["http://am:9093/#top"]', "must not have a #fragment"),
        ('urls = ["http://ämm:9093"]', "ASCII"),
        ("urls = []", "urls: needs at least one"),
        ('urls = ["http://a", "http://a"]', "twice"),
        ("timeout = 0", "timeout: must be more than 0"),
        ('resolve_after = "0s"', "resolve_after: must be more than 0"),
        ('resolve_after = "soon"', "resolve_after: bad duration"),
        ('labels = { "bad-name" = "x" }', "labels: 'bad-name' is not a label name"),
        ('labels = { "1st" = "x" }', "is not a label name"),
        ('labels = { __meta = "x" }', "is not a label name"),
        ('labels = { host = "x" }', "labels: 'host' is set by wrapalert"),
        ('labels = { env = "" }', "env: expected a non-empty string"),
        ("labels = { env = 1 }", "env: expected a non-empty string"),
        ('labels = "env=prod"', "labels: expected table, got string"),
        ("events_per_second = 0", "events_per_second: 0 is out of range"),
        ('url = "http://x"', "url: unknown key"),
    ],
)
def test_alertmanager_errors_name_line_and_key(table: str, error: str) -> None:
    """Each bad alertmanager value is refused with file:line, the sink and the key."""
    with pytest.raises(ConfigError, match=rf"^wa\.toml:\d+: \[\[sink\]\] #1 .*{error}"):
        sink(f'type = "alertmanager"\n{table}')


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("", "url: missing"),
        ('url = "mailto:root"', "must start with http:// or https://"),
        ('url = "https://"', "has no host"),
        ('url = "https://h/a b"', "without spaces"),
        ('url = "https://h/\\r\\nX-Evil: 1"', "without spaces or control characters"),
        ('url = "https://h/"\nheaders = { "X-Evil" = "a\\r\\nHost: evil" }', "line break"),
        ('url = "https://h/"\nheaders = { "X-Evil" = "a\\nb" }', "X-Evil: holds a line break"),
        ('url = "https://h/"\nheaders = { "X-Nul" = "a\\u0000b" }', "control character"),
        ('url = "https://h/"\nheaders = { "Bad Name" = "x" }', "'Bad Name' is not a header"),
        ('url = "https://h/"\nheaders = { "Bad:Name" = "x" }', "is not a header name"),
        ('url = "https://h/"\nheaders = { Host = "evil" }', "'Host' is set by wrapalert"),
        ('url = "https://h/"\nheaders = { content-length = "1" }', "is set by wrapalert"),
        ('url = "https://h/"\nheaders = { X-Name = "Zoë" }', "X-Name: use ASCII"),
        ('url = "https://h/"\nheaders = { X-N = 1 }', "X-N: expected a string"),
        ('url = "https://h/"\ntimeout = -1', "timeout: duration out of range"),
        ('url = "https://h/"\nurls = ["https://h/"]', "urls: unknown key"),
    ],
)
def test_webhook_errors_name_line_and_key(table: str, error: str) -> None:
    """Each bad webhook value is refused with file:line, the sink and the key; no value can
    smuggle a line break into the request."""
    with pytest.raises(ConfigError, match=rf"^wa\.toml:\d+: \[\[sink\]\] #1 .*{error}"):
        sink(f'type = "webhook"\n{table}')


def test_the_error_points_at_the_line_of_the_bad_key() -> None:
    """The line number is the bad key's own, in the sink table that holds it."""
    text = """
[[sink]]
type = "maildir"
path = "/tmp/Maildir"

[[sink]]
type = "webhook"
url = "https://chat.example/hook"
headers = { X = "a\\nb" }
"""
    with pytest.raises(ConfigError, match=r"^wa\.toml:9: \[\[sink\]\] #2 headers: X: "):
        config.loads(text, "wa.toml")


def test_unknown_sink_types_name_the_new_ones() -> None:
    """The list of sink types offered on a typo includes alertmanager and webhook."""
    with pytest.raises(ConfigError, match="unknown sink type 'alertmanger'") as raised:
        sink('type = "alertmanger"')
    # The registry lists the types by name: the order is not the point, both names are.
    assert '"alertmanager"' in str(raised.value)
    assert '"webhook"' in str(raised.value)
