"""Routing: severity and sinks per group, from the first matching [[route]]."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from helpers import Running, event, maildir_messages, write_config

from wrapalert import config
from wrapalert.config import RouteConfig
from wrapalert.confparse import ConfigError
from wrapalert.daemon.server import Server
from wrapalert.match import Matcher, Selector
from wrapalert.pipeline.route import Router
from wrapalert.pipeline.stage import Destination
from wrapalert.wire import encode


def test_first_matching_route_wins() -> None:
    """Routes are tried in order; the first whose matchers all match decides."""
    router = Router(
        (
            RouteConfig(Selector.parse(["daemon=sshd", "client=10.0.0.0/8"]), "info", ("jsonl",)),
            RouteConfig(Selector.parse(["daemon=sshd"]), "critical", None),
            RouteConfig(Selector.parse(["trust=untrusted"]), "info", ("local",)),
        )
    )
    assert router.route(event(addr="10.1.1.1")) == Destination("info", ("jsonl",))
    assert router.route(event()) == Destination("critical", None)
    assert router.route(event("ftpd", trusted=False)) == Destination("info", ("local",))
    assert router.route(event("ftpd")) == Destination("warning", None)


def test_routes_reach_the_router_parsed() -> None:
    """A [[route]]'s match list is a Selector once config has read it; the Router takes the
    routes as they are."""
    cfg = config.loads(
        '[[route]]\nmatch = ["client=10.0.0.0/8", "trust=trusted"]\nseverity = "info"\n'
        '[[route]]\nmatch = ["daemon=sshd"]\nseverity = "critical"\n'
    )
    assert cfg.routes[0].match == Selector(
        (Matcher("client_addr", "10.0.0.0/8", ipaddress.IPv4Network("10.0.0.0/8")),), trust=True
    )
    router = Router(cfg.routes)
    assert router.route(event("sshd", "10.9.9.9")) == Destination("info", None)
    assert router.route(event("sshd", "10.9.9.9", trusted=False)) == Destination("critical", None)
    assert router.route(event("ftpd")) == Destination("warning", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[route]]\nmatch = ["trust=maybe"]\n', "use trust=trusted or trust=untrusted"),
        ('[[route]]\nmatch = ["client=x"]\n', "not an address or network"),
        ('[[route]]\nseverity = "urgent"\n', 'use "info", "warning" or "critical"'),
        ('[[route]]\nsinks = ["pager"]\n', "no sink named 'pager'"),
    ],
)
def test_bad_routes_are_refused_with_their_line(text: str, message: str) -> None:
    """A route that cannot work is a config error naming the line and the problem."""
    with pytest.raises(ConfigError, match=message) as info:
        config.loads(text, "f.toml")
    assert str(info.value).startswith("f.toml:")


def test_groups_reach_only_the_sinks_their_route_names(sockdir: Path) -> None:
    """With routes, each sink's digest holds the groups routed to it, with their severity."""
    path = write_config(
        sockdir,
        sinks=f"""
[[sink]]
type = "maildir"
name = "ops"
path = "{sockdir}/ops"

[[sink]]
type = "maildir"
name = "archive"
path = "{sockdir}/archive"

[[route]]
match = ["daemon=sshd"]
severity = "critical"

[[route]]
match = ["daemon=vsftpd"]
severity = "info"
sinks = ["archive"]
""",
    )
    cfg = config.load(path)

    async def scenario() -> None:
        server = Server(cfg)
        async with Running(server):
            for daemon in ("sshd", "vsftpd", "vsftpd"):
                server.intake.handle(
                    encode({"d": daemon, "a": "192.0.2.1"}), uid=0, pid=1, origin="socket"
                ) if server.intake else None
            server.flush()

    asyncio.run(scenario())
    (ops,) = maildir_messages(sockdir / "ops")
    (archive,) = maildir_messages(sockdir / "archive")
    assert ops["X-Wrapalert-Events"] == "1"
    assert archive["X-Wrapalert-Events"] == "3"


def test_digest_mail_carries_the_highest_severity_and_the_scan_count(sockdir: Path) -> None:
    """X-Wrapalert-Severity is the highest route severity in the digest; a source refused
    by several daemons counts in X-Wrapalert-Scans."""
    path = write_config(
        sockdir, extra='\n[[route]]\nmatch = ["daemon=vsftpd"]\nseverity = "critical"\n'
    )
    cfg = config.load(path)

    async def scenario() -> None:
        server = Server(cfg)
        async with Running(server):
            assert server.intake is not None
            for daemon in ("sshd", "vsftpd", "in.ftpd"):
                server.intake.handle(
                    encode({"d": daemon, "a": "203.0.113.5"}), uid=0, pid=1, origin="socket"
                )
            server.flush()

    asyncio.run(scenario())
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Severity"] == "critical"
    assert msg["X-Wrapalert-Scans"] == "1"
