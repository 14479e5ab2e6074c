"""The ban decision without a kernel: targets, the allowlist, the counter, the stage, the
sink's config, the state schema and the digest's Banned section."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import NO_DIGESTS, body, one_group

from wrapalert import config
from wrapalert.banrule import BanRule, BanTargetError, local_addresses
from wrapalert.clock import SystemClock
from wrapalert.daemon import control
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import SCHEMA_VERSION, Store
from wrapalert.digest_view import context
from wrapalert.mail import Renderer
from wrapalert.model import Event, digest_from_json, digest_to_json
from wrapalert.pipeline.ban import BanCounter, BanStage
from wrapalert.pipeline.stage import Flow
from wrapalert.sinks.nftables import NftablesSink, NftablesSinkConfig


def test_ipv6_sources_are_banned_by_network() -> None:
    """An IPv6 source becomes its /64 (or the configured prefix); IPv4 stays one address."""
    assert BanRule().target("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert BanRule(ipv6_prefix=48).target("2001:db8:1:2::9") == "2001:db8:1::/48"
    assert BanRule().target("203.0.113.7") == "203.0.113.7"
    assert BanRule().target("::ffff:203.0.113.7") == "203.0.113.7"
    assert BanRule().target("unknown") is None


def test_loopback_link_local_own_and_configured_networks_are_allowlisted() -> None:
    """Loopback, link-local, this host's addresses and `allow` are never banned."""
    rule = BanRule(allow=("198.51.100.0/24",), local=("192.0.2.10",))
    for target in ("127.0.0.2", "169.254.1.1", "192.0.2.10", "198.51.100.9", "fe80::/64"):
        assert rule.allowed(target), target
    assert not rule.allowed("192.0.2.11")
    assert rule.allowed(rule.target("::1") or "")


def test_an_ipv6_network_holding_an_allowed_address_is_not_banned() -> None:
    """A /64 that overlaps an allowed host counts as allowlisted."""
    rule = BanRule(allow=("2001:db8::5/128",))
    assert rule.allowed(rule.target("2001:db8::77") or "")


def test_operator_targets_are_checked_and_widened() -> None:
    """`ban add` takes an address or an IPv6 network (widened to ipv6_prefix); not IPv4 nets."""
    rule = BanRule()
    assert rule.parse_target("2001:db8:5::7") == "2001:db8:5::/64"
    assert rule.parse_target("2001:db8:5::/96") == "2001:db8:5::/64"
    assert rule.parse_target("2001:db8::/32") == "2001:db8::/32"
    with pytest.raises(BanTargetError):
        rule.parse_target("192.0.2.0/24")
    with pytest.raises(BanTargetError):
        rule.parse_target("example.org")


def test_local_addresses_include_loopback() -> None:
    """This host's addresses are read from /proc (loopback is always among them)."""
    assert "127.0.0.1" in local_addresses()


def test_counter_needs_threshold_refusals_within_the_window() -> None:
    """Three refusals spread over more than the window do not reach a threshold of three."""
    counter = BanCounter(threshold=3, window=10.0)
    assert not counter.hit("a", 0.0)
    assert not counter.hit("a", 6.0)
    assert not counter.hit("a", 12.0)  # the first is out of the window now
    assert counter.hit("a", 13.0)


def ev(addr: str, *, trusted: bool = True, at: float = 0.0) -> Event:
    return Event(
        {"daemon": "sshd", "client_addr": addr}, at, uid=0 if trusted else 65534, trusted=trusted
    )


def test_stage_counts_only_trusted_events() -> None:
    """Untrusted reports past the threshold ask for nothing; trusted ones ask once."""
    asked: list[tuple[str, str, float]] = []
    stage = BanStage(BanRule(threshold=2), {}, lambda t, r, now: asked.append((t, r, now)))
    for i in range(5):
        assert stage(Flow(ev("203.0.113.7", trusted=False, at=i))) is not None
    assert asked == []
    stage(Flow(ev("203.0.113.7", at=10)))
    stage(Flow(ev("203.0.113.7", at=11)))
    assert asked == [("203.0.113.7", "2 refusals", 11)]


def test_stage_skips_settled_targets() -> None:
    """A target already banned (or refused lately) is not counted again."""
    asked: list[str] = []
    stage = BanStage(BanRule(threshold=1), {"203.0.113.7": 99.0}, lambda t, _r, _n: asked.append(t))
    stage(Flow(ev("203.0.113.7")))
    assert asked == []


def test_config_reads_the_nftables_sink(tmp_path: Path) -> None:
    """Every documented key of the nftables sink is read and validated."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[[sink]]\ntype = "nftables"\nthreshold = 5\nwindow = "1m"\nban_for = "2h"\n'
        'ipv6_prefix = 56\nallow = ["10.0.0.0/8"]\nmax_bans = 7\nmode = "dry-run"\n'
        'table = "wa_test"\n' + NO_DIGESTS
    )
    (sink,) = config.load(path).sinks
    assert sink == NftablesSinkConfig(
        threshold=5,
        window=60.0,
        ban_for=7200.0,
        ipv6_prefix=56,
        allow=("10.0.0.0/8",),
        max_bans=7,
        mode="dry-run",
        table="wa_test",
    )


@pytest.mark.parametrize(
    "line",
    [
        'mode = "on"',
        'allow = ["10.0.0.300/8"]',
        'table = "x; flush ruleset"',
        "threshold = 0",
        "events_per_second = 5",  # no rate limit may stand between the stage and its counts
    ],
)
def test_config_refuses_bad_nftables_keys(tmp_path: Path, line: str) -> None:
    """A bad mode, allow network, table name or threshold, or a rate, is a config error."""
    path = tmp_path / "w.toml"
    path.write_text(f'[[sink]]\ntype = "nftables"\n{line}\n{NO_DIGESTS}')
    with pytest.raises(config.ConfigError):
        config.load(path)


def test_config_refuses_a_second_nftables_sink(tmp_path: Path) -> None:
    """Two nftables sinks would fight over bans: the second is a config error."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[[sink]]\ntype = "nftables"\n\n[[sink]]\ntype = "nftables"\nname = "b"\n' + NO_DIGESTS
    )
    with pytest.raises(config.ConfigError, match="only one nftables sink"):
        config.load(path)


def test_schema_1_database_gains_the_bans_tables(tmp_path: Path) -> None:
    """A state database from before bans is migrated to the current schema with both tables."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.open()
    assert store.db is not None
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    store.stage_ban("203.0.113.7", "3 refusals", 1.0, 2.0, dry_run=False)
    store.stage_ban_log(1.0, "banned", "203.0.113.7", "3 refusals", 2.0)
    assert store.commit()
    assert store.bans() == [("203.0.113.7", "3 refusals", 1.0, 2.0, False)]
    assert store.ban_log()[0][1:3] == ("banned", "203.0.113.7")


BANNED = (
    ("banned", "203.0.113.7", "10 refusals", 1_700_000_000.0),
    ("refused", "198.51.100.9", "10 refusals; allowlisted", 1_700_003_600.0),
)


def test_digest_keeps_its_ban_notes_through_the_outbox() -> None:
    """A digest's ban notes survive the outbox's JSON with the same id."""
    digest = replace(one_group(), banned=BANNED, id="")
    again = digest_from_json(digest_to_json(digest))
    assert again == digest
    assert again.id == digest.id


def test_digest_text_and_html_show_the_banned_section() -> None:
    """The Banned section names the target, why, until when and the unban command."""
    digest = replace(one_group(created=1_700_000_000.0), banned=BANNED, id="")
    assert context(digest)["banned"][0]["command"] == "wrapalert ban del 203.0.113.7"
    msg = Renderer("wrapalert@localhost", ("root",)).render(digest)
    for part in (body(msg, "plain"), body(msg, "html")):
        assert "Banned" in part
        assert "until " in part
        assert "203.0.113.7" in part
        assert "wrapalert ban del 203.0.113.7" in part
        assert "198.51.100.9" in part


def test_digest_without_bans_has_no_banned_section() -> None:
    """No ban notes: no Banned heading."""
    assert context(one_group())["banned"] == []


@pytest.mark.parametrize("seconds", [True, "3600", 0, -5, 400 * 86400])
def test_a_manual_ban_needs_a_real_duration(tmp_path: Path, seconds: object) -> None:
    """`ban add` refuses a duration that is a boolean, a string, not positive or over a
    year, before anything reaches the kernel."""
    store = Store(tmp_path)
    store.open()
    bans = Bans(store, SystemClock(), Stats())
    bans.configure(NftablesSink(NftablesSinkConfig(nft="/nonexistent/nft")))
    with pytest.raises(control.ControlError, match="seconds"):  # not the kernel's error
        asyncio.run(bans.api_add({"addr": "203.0.113.7", "seconds": seconds}))
    assert bans.active == {}
