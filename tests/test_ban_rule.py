"""The ban decision without a kernel: targets, the allowlist, the counter, the stage, the
sink's config, the state schema and the digest's Banned section."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest
from helpers import NO_DIGESTS, body, event, one_group

from wrapalert import config
from wrapalert.banrule import BanRule, BanTargetError, normalise_allow
from wrapalert.clock import SystemClock
from wrapalert.confparse import ConfigError
from wrapalert.daemon import api, control
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import SCHEMA_VERSION, BanRow, Store
from wrapalert.digest_view import context
from wrapalert.mail import Renderer
from wrapalert.model import BanNote, digest_from_json, digest_to_json
from wrapalert.pipeline.ban import BanCounter, BanStage
from wrapalert.pipeline.stage import Flow
from wrapalert.scanrule import ScanRule
from wrapalert.sinks.nftables import NftablesSink, NftablesSinkConfig, describe


def test_ipv6_sources_are_banned_by_network() -> None:
    """An IPv6 source becomes its /64 (or the configured prefix); IPv4 stays one address."""
    assert BanRule().target("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert BanRule(ipv6_prefix=48).target("2001:db8:1:2::9") == "2001:db8:1::/48"
    assert BanRule().target("203.0.113.7") == "203.0.113.7"
    assert BanRule().target("::ffff:203.0.113.7") == "203.0.113.7"
    assert BanRule().target("unknown") is None


def test_loopback_link_local_and_configured_networks_are_allowlisted() -> None:
    """Loopback, link-local and `allow` are never banned."""
    rule = BanRule(allow=normalise_allow(["198.51.100.0/24"]))
    for target in ("127.0.0.2", "169.254.1.1", "198.51.100.9", "fe80::/64"):
        assert rule.allowed(target), target
    assert not rule.allowed("192.0.2.11")
    assert rule.allowed(rule.target("::1") or "")


def test_an_ipv6_network_holding_an_allowed_address_is_not_banned() -> None:
    """A /64 that overlaps an allowed host counts as allowlisted."""
    rule = BanRule(allow=normalise_allow(["2001:db8::5/128"]))
    assert rule.allowed(rule.target("2001:db8::77") or "")


def test_operator_targets_are_checked_and_widened() -> None:
    """`ban add` takes an address or a network; an IPv6 one narrower than ipv6_prefix is
    widened to it, and names are refused."""
    rule = BanRule()
    assert rule.parse_target("2001:db8:5::7") == "2001:db8:5::/64"
    assert rule.parse_target("2001:db8:5::/96") == "2001:db8:5::/64"
    assert rule.parse_target("203.0.113.7/32") == "203.0.113.7"
    with pytest.raises(BanTargetError, match="not an IP address"):
        rule.parse_target("example.org")


@pytest.mark.parametrize(
    ("text", "forced"),
    [
        ("2001:db8::/32", "2001:db8::/32"),  # wider than ipv6_prefix
        ("192.0.2.0/24", "192.0.2.0/24"),  # an IPv4 network
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),  # the same, written IPv4-mapped
        ("64:ff9b::/96", "64:ff9b::/96"),  # every NAT64 client
        ("2002:c000:204::/48", "2002:c000:204::/48"),  # a 6to4 site
        ("4000::/2", "4000::/2"),  # a quarter of the IPv6 internet
    ],
)
def test_wide_operator_targets_need_force(text: str, forced: str) -> None:
    """Networks wider than one IPv4 address or than ipv6_prefix, and networks of a shared
    prefix, are refused with the hint to --force, and taken as written with it."""
    rule = BanRule()
    with pytest.raises(BanTargetError, match="--force"):
        rule.parse_target(text)
    assert rule.parse_target(text, force=True) == forced


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("64:ff9b::203.0.113.7", "64:ff9b::cb00:7107/128"),  # NAT64, well-known prefix
        ("64:ff9b:1:2:3:4:cb00:7107", "64:ff9b:1:2:3:4:cb00:7107/128"),  # NAT64, local use
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd2/128"),
        ("2002:cb00:7107::1", "2002:cb00:7107::1/128"),  # 6to4
        ("2001:db8:7:8::42", "2001:db8:7:8::/64"),  # an ordinary source: its /64
    ],
)
def test_translated_sources_are_banned_as_one_address(source: str, target: str) -> None:
    """NAT64, Teredo and 6to4 sources are banned as their single address, never their /64
    (which holds every client behind the gateway)."""
    assert BanRule().target(source) == target
    assert BanRule().parse_target(source) == target


def test_a_wide_prefix_never_holds_a_shared_one() -> None:
    """With ipv6_prefix 16 a source next to Teredo's 2001::/32 gets a network narrowed
    until it no longer holds Teredo; elsewhere it gets the /16."""
    rule = BanRule(ipv6_prefix=16)
    target = rule.target("2001:db8::1")
    assert target == "2001:800::/21"
    assert not ip_network("2001::/32").subnet_of(ip_network(target))  # type: ignore[arg-type]
    assert rule.target("2003::1") == "2003::/16"


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:c000:207", "192.0.2.7/32"),
        ("192.0.2.1/24", "192.0.2.0/24"),
        ("fe80::1%eth0", "fe80::1/128"),
        ("2001:db8::/48", "2001:db8::/48"),
    ],
)
def test_allow_entries_are_normalised(written: str, read: str) -> None:
    """IPv4-mapped allow entries (as sshd and ss print dual-stack peers) are read as the
    IPv4 networks they mean; host bits and zones are dropped."""
    assert normalise_allow([written]) == (ipaddress.ip_network(read),)


def test_a_mapped_allow_entry_protects_the_ipv4_source() -> None:
    """An allow entry written ::ffff:a.b.c.d keeps a.b.c.d from a ban (it was ignored)."""
    rule = BanRule(allow=normalise_allow(["::ffff:198.51.100.9"]))
    assert rule.allowed(rule.target("198.51.100.9") or "")
    assert rule.allowed(rule.target("::ffff:198.51.100.9") or "")
    assert not rule.allowed("198.51.100.10")


def test_an_allow_entry_mixing_mapped_and_plain_ipv6_is_refused() -> None:
    """An IPv6 network holding the whole mapped range and more is refused, saying how to
    write it."""
    with pytest.raises(ValueError, match="write the IPv4 part as IPv4"):
        normalise_allow(["::ffff:0:0/80"])


def test_counter_needs_threshold_refusals_within_the_window() -> None:
    """Three refusals spread over more than the window do not reach a threshold of three."""
    counter = BanCounter(threshold=3, window=10.0)
    assert not counter.hit("a", 0.0)
    assert not counter.hit("a", 6.0)
    assert not counter.hit("a", 12.0)  # the first is out of the window now
    assert counter.hit("a", 13.0)


@pytest.mark.parametrize("transport", ["udp", "unknown"])
def test_stage_counts_only_what_the_kernel_vouched_for(transport: str) -> None:
    """Trusted reports whose source no TCP handshake proved (a UDP service's forgeable
    client address, or no evidence at all) ask for nothing, however many."""
    asked: list[tuple[str, str, float]] = []
    stage = BanStage(BanRule(threshold=2), {}, lambda t, r, now: asked.append((t, r, now)))
    for i in range(5):
        assert stage(Flow(event(addr="203.0.113.7", at=i, transport=transport))) is not None
    assert asked == []
    stage(Flow(event(addr="203.0.113.7", at=10, transport="tcp")))
    stage(Flow(event(addr="203.0.113.7", at=11, transport="tcp")))
    assert asked == [("203.0.113.7", "2 refusals", 11)]  # the vouched ones alone


def test_stage_bans_a_scan_across_daemons_it_vouched_for() -> None:
    """Three daemons refusing one vouched-for address within [scan] window ban it at once,
    below the threshold; the same spread of forged (udp) reports does not."""
    rule = ScanRule(window=60.0, daemons=3, sources=16)
    asked: list[tuple[str, str, float]] = []
    stage = BanStage(BanRule(threshold=10), {}, lambda t, r, n: asked.append((t, r, n)), rule)
    for i, daemon in enumerate(("in.tftpd", "in.talkd", "in.ntalkd")):
        stage(Flow(event(addr="203.0.113.66", at=i, transport="udp", daemon=daemon)))
    assert asked == []
    for i, daemon in enumerate(("sshd", "in.ftpd", "vsftpd")):
        stage(Flow(event(addr="203.0.113.9", at=100 + i, daemon=daemon, transport="tcp")))
    assert asked == [("203.0.113.9", "scan of 3 daemons", 102)]


def test_stage_scan_needs_its_daemons_within_the_window() -> None:
    """Three daemons spread over more than the window are no scan; without [scan] (or with
    scan = false) the stage finds none."""
    rule = ScanRule(window=60.0, daemons=3, sources=16)
    asked: list[str] = []
    stage = BanStage(BanRule(threshold=10), {}, lambda t, _r, _n: asked.append(t), rule)
    for at, daemon in ((0, "sshd"), (50, "in.ftpd"), (100, "vsftpd")):
        stage(Flow(event(addr="203.0.113.9", at=at, daemon=daemon, transport="tcp")))
    assert asked == []
    for scan_off in (BanStage(BanRule(threshold=10), {}, lambda t, _r, _n: asked.append(t)),
                     BanStage(BanRule(threshold=10, scan=False), {},
                              lambda t, _r, _n: asked.append(t), rule)):  # fmt: skip
        for daemon in ("sshd", "in.ftpd", "vsftpd"):
            scan_off(Flow(event(addr="203.0.113.10", daemon=daemon, transport="tcp")))
    assert asked == []


def test_stage_counts_only_trusted_events() -> None:
    """Untrusted reports past the threshold ask for nothing; trusted ones ask once."""
    asked: list[tuple[str, str, float]] = []
    stage = BanStage(BanRule(threshold=2), {}, lambda t, r, now: asked.append((t, r, now)))
    for i in range(5):
        assert (
            stage(Flow(event(addr="203.0.113.7", trusted=False, at=i, transport="tcp"))) is not None
        )
    assert asked == []
    stage(Flow(event(addr="203.0.113.7", at=10, transport="tcp")))
    stage(Flow(event(addr="203.0.113.7", at=11, transport="tcp")))
    assert asked == [("203.0.113.7", "2 refusals", 11)]


def test_stage_skips_settled_targets() -> None:
    """A target already banned (or refused lately) is not counted again."""
    asked: list[str] = []
    stage = BanStage(BanRule(threshold=1), {"203.0.113.7": 99.0}, lambda t, _r, _n: asked.append(t))
    stage(Flow(event(addr="203.0.113.7", transport="tcp")))
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
        allow=(ipaddress.IPv4Network("10.0.0.0/8"),),
        max_bans=7,
        mode="dry-run",
        table="wa_test",
    )


def test_the_allow_list_reaches_the_rule_parsed(tmp_path: Path) -> None:
    """`allow` is read once into normalised networks (a mapped entry as IPv4, host bits
    dropped), which the ban rule takes as they are."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[[sink]]\ntype = "nftables"\nallow = ["::ffff:198.51.100.9", "2001:db8::1/64"]\n'
        + NO_DIGESTS
    )
    (sink,) = config.load(path).sinks
    assert isinstance(sink, NftablesSinkConfig)
    assert sink.allow == (
        ipaddress.IPv4Network("198.51.100.9/32"),
        ipaddress.IPv6Network("2001:db8::/64"),
    )
    rule = sink.rule
    assert rule.allow is sink.allow
    assert rule.allowed("198.51.100.9")
    assert rule.allowed("2001:db8::/64")
    assert not rule.allowed("198.51.100.10")


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
    with pytest.raises(ConfigError):
        config.load(path)


def test_config_refuses_a_second_nftables_sink(tmp_path: Path) -> None:
    """Two nftables sinks would fight over bans: the second is a config error."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[[sink]]\ntype = "nftables"\n\n[[sink]]\ntype = "nftables"\nname = "b"\n' + NO_DIGESTS
    )
    with pytest.raises(ConfigError, match="only one nftables sink"):
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
    assert store.bans() == [BanRow("203.0.113.7", "3 refusals", 1.0, 2.0, dry_run=False)]
    assert (store.ban_log()[0].action, store.ban_log()[0].target) == ("banned", "203.0.113.7")


BANNED = (
    BanNote("banned", "203.0.113.7", "10 refusals", 1_700_000_000.0),
    BanNote("refused", "198.51.100.9", "10 refusals; allowlisted", 1_700_003_600.0),
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
    add = api.BanCommands(bans).add
    with pytest.raises(control.ControlError, match="seconds"):  # not the kernel's error
        asyncio.run(add({"addr": "203.0.113.7", "seconds": seconds}))
    assert bans.policy.active == {}


def test_digest_says_when_bans_are_not_enforced_and_when_repaired() -> None:
    """Notes that bans are not in the kernel (with the error) and that the table was
    repaired reach both parts of the digest."""
    notes = (
        BanNote("unenforced", "2 ban(s)", "nft: Operation not permitted: install the drop-in", 1e9),
        BanNote("repaired", "wrapalert", "the table was missing; 2 missing", 1e9 + 30),
    )
    digest = replace(one_group(created=1_700_000_000.0), banned=notes, id="")
    msg = Renderer("wrapalert@localhost", ("root",)).render(digest)
    text, html = body(msg, "plain"), body(msg, "html")
    assert "NOT ENFORCED: 2 ban(s) not in the kernel since" in text
    assert "install the drop-in" in text
    assert "table inet wrapalert repaired at" in text
    assert "not enforced" in html
    assert "table repaired at" in html


AM_SINK = '[[sink]]\ntype = "alertmanager"\nname = "am"\n'


def test_config_reads_the_fleet_keys(tmp_path: Path) -> None:
    """fleet names an alertmanager sink; follow, follow_interval, fleet_hosts and
    fleet_min_hosts are read, and `follow` reaches the rule."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[[sink]]\ntype = "nftables"\nfleet = "am"\nfollow = true\nfollow_interval = "30s"\n'
        'fleet_hosts = ["web1", "web2"]\nfleet_min_hosts = 2\n' + AM_SINK + NO_DIGESTS
    )
    sink = config.load(path).sinks[0]
    assert isinstance(sink, NftablesSinkConfig)
    assert (sink.fleet, sink.follow, sink.follow_interval) == ("am", True, 30.0)
    assert (sink.fleet_hosts, sink.fleet_min_hosts) == (frozenset({"web1", "web2"}), 2)
    assert sink.rule.follow is True
    assert "follows theirs every 30s (from web1, web2; 2 host(s) at least)" in describe(sink)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (
            'fleet = "mail"',
            r"fleet: 'mail' is not an alertmanager sink \(alertmanager sinks: \['am'\]\)",
        ),
        ('fleet = "nope"', "fleet: 'nope' names no sink"),
        ("follow = true", "follow: needs fleet"),
        ('fleet = "am"\nfleet_min_hosts = 2', "fleet_min_hosts: only means something with follow"),
        (
            'fleet = "am"\nfollow = true\nfleet_hosts = ["a"]\nfleet_min_hosts = 2',
            "nothing could ever be followed",
        ),
        ('fleet = "am"\nfollow = true\nfleet_hosts = []', "fleet_hosts: empty"),
        (
            'fleet = "am"\nfollow = true\nfleet_hosts = ["web 1"]',
            "fleet_hosts: 'web 1' is not a host name",
        ),
        (
            'fleet = "am"\nfollow = true\nfollow_interval = "500ms"',
            "follow_interval: must be at least 1s",
        ),
    ],
)
def test_config_refuses_fleet_keys_that_cannot_work(tmp_path: Path, keys: str, error: str) -> None:
    """Each with the key, its line and what is wrong."""
    path = tmp_path / "w.toml"
    mail = f'[[sink]]\ntype = "maildir"\nname = "mail"\npath = "{tmp_path}/Maildir"\n'
    path.write_text(f'[[sink]]\ntype = "nftables"\n{keys}\n{AM_SINK}{mail}')
    with pytest.raises(ConfigError, match=error):
        config.load(path)


FLEET_NOTES = (
    BanNote("banned", "203.0.113.7", "10 refusals", 1_700_003_600.0),
    BanNote("banned", "198.51.100.9", "fleet: banned on web1, web2", 1_700_003_600.0),
    BanNote("refused", "192.0.2.10", "fleet: banned on web1; allowlisted", 1_700_000_000.0),
    BanNote(
        "lifted", "198.51.100.8", "fleet: banned on web2; the fleet lifted it", 1_700_000_000.0
    ),
)


def test_the_digest_shows_fleet_bans_apart_from_this_hosts() -> None:
    """Bans followed from the fleet have their own section, naming the hosts, how they end
    and the command that lifts one here; this host's own stay in Banned."""
    digest = replace(one_group(created=1_700_000_000.0), banned=FLEET_NOTES, id="")
    view = context(digest)
    assert [b["target"] for b in view["banned"]] == ["203.0.113.7"]
    assert [b["target"] for b in view["fleet_banned"]] == [
        "198.51.100.9",
        "192.0.2.10",
        "198.51.100.8",
    ]
    msg = Renderer("wrapalert@localhost", ("root",)).render(digest)
    text = body(msg, "plain")
    mine, _, theirs = text.partition("Followed from the fleet")
    assert "203.0.113.7 banned: 10 refusals" in mine
    assert "198.51.100.9" not in mine
    assert "198.51.100.9 banned: fleet: banned on web1, web2, until " in theirs
    assert "to lift it here now: wrapalert ban del 198.51.100.9" in theirs
    assert "192.0.2.10 not followed: fleet: banned on web1; allowlisted" in theirs
    assert "198.51.100.8 fleet ban lifted: fleet: banned on web2; the fleet lifted it" in theirs
    html = body(msg, "html")
    assert "Followed from the fleet" in html
    assert (
        html.index("203.0.113.7")
        < html.index("Followed from the fleet")
        < html.index("198.51.100.9")
    )
