"""The ban table's layout, listing, comparison and repair plan (bantable.py): pure
tests first, then against the real nft in a private network namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from nftns import Netns, require_netns

from wrapalert.bantable import CHUNK, SLACK, KernelTable, Layout, Owner

ME = Owner(4242, 123456)
LAYOUT = Layout("wa_test", 64)


def listing(layout: Layout, owner: Owner, elements: dict[str, tuple[Any, float]]) -> dict[str, Any]:
    """What `nft -j list table` prints for a table declared as `declare` does, holding
    `elements` (set -> value, seconds left), written the way nft 1.0.6 prints them."""
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    items.append({"table": {"family": "inet", "name": layout.table, "handle": 1}})
    for command in layout.declare(owner):
        verb, obj = next(iter(command.items()))
        if verb == "add" and "set" in obj:
            s = obj["set"]
            elems = [
                {"elem": {"val": v, "timeout": 3600, "expires": left}}
                for name, (v, left) in elements.items()
                if name.split("#")[0] == s["name"]
            ]
            items.append({"set": {**s, "handle": 2, **({"elem": elems} if elems else {})}})
        elif verb == "add" and "chain" in obj:
            items.append({"chain": {**obj["chain"], "handle": 3}})
        elif verb == "add" and "rule" in obj:
            items.append({"rule": {**obj["rule"], "handle": 4}})
    return {"nftables": items}


def test_targets_go_to_their_sets() -> None:
    """IPv4 addresses and IPv6 networks of ipv6_prefix go to hash sets, single IPv6
    addresses to their own, other networks to the interval sets."""
    place = LAYOUT.place
    assert place("203.0.113.7") == ("ban4", "203.0.113.7")
    assert place("2001:db8:1:2::/64") == ("ban6net", "2001:db8:1:2::")
    assert place("64:ff9b::cb00:7107/128") == ("ban6host", "64:ff9b::cb00:7107")
    assert place("192.0.2.0/24") == ("ban4net", {"prefix": {"addr": "192.0.2.0", "len": 24}})
    assert place("2001:db8::/32") == ("ban6", {"prefix": {"addr": "2001:db8::", "len": 32}})
    assert Layout("t", 48).place("2001:db8:1:2::/64")[0] == "ban6"  # a ban of another prefix


def test_a_listed_element_keys_back_to_its_target() -> None:
    """What `place` puts into a set reads back as the same target."""
    for target in ("203.0.113.7", "2001:db8:1:2::/64", "64:ff9b::1/128", "192.0.2.0/24"):
        name, value = LAYOUT.place(target)
        assert LAYOUT.key(name, value) == target


def test_the_chain_lets_established_traffic_pass_first() -> None:
    """The first rule accepts established and related packets (replies to the host's own
    connections); every drop comes after it, each set matched once."""
    rules = [c["add"]["rule"] for c in LAYOUT.declare(ME) if "rule" in c.get("add", {})]
    first = rules[0]["expr"]
    assert first[0]["match"]["left"] == {"ct": {"key": "state"}}
    assert first[0]["match"]["right"] == ["established", "related"]
    assert first[1] == {"accept": None}
    assert rules[0]["comment"] == ME.comment()
    drops = [r for r in rules[1:] if r["expr"][-1] == {"drop": None}]
    assert [r["expr"][0]["match"]["right"] for r in drops] == [
        "@ban4",
        "@ban4net",
        "@ban6net",
        "@ban6host",
        "@ban6",
    ]
    masked = drops[2]["expr"][0]["match"]["left"]
    assert masked["&"][1] == "ffff:ffff:ffff:ffff::"


def test_owner_marker_round_trips_and_rejects_other_comments() -> None:
    """The owner marker is parsed back; other comments are no owner."""
    assert Owner.parse(ME.comment()) == ME
    assert Owner.parse("wrapalert owner pid=1 start=x") is None
    assert Owner.parse("some admin's comment") is None
    assert Owner.parse(None) is None


def test_a_table_in_step_shows_no_drift() -> None:
    """The table as declared, holding exactly the book's bans, differs in nothing."""
    want = {"203.0.113.7": 3000.0, "2001:db8:1:2::/64": 100.0}
    kernel = LAYOUT.parse(
        listing(LAYOUT, ME, {"ban4": ("203.0.113.7", 2999), "ban6net": ("2001:db8:1:2::", 100)})
    )
    drift = LAYOUT.diff(kernel, want, ME)
    assert not drift.changed
    assert not drift.marker
    assert drift.unenforced == 0
    assert LAYOUT.repair(kernel, drift, want, ME) == []


def test_a_missing_table_leaves_every_ban_unenforced() -> None:
    """No table: every ban the book holds is missing and unenforced; the repair declares
    the table alone first, then adds the elements (nft 1.0.6 cannot do both at once)."""
    want = {"203.0.113.7": 3000.0, "2001:db8::/32": 3000.0}
    drift = LAYOUT.diff(KernelTable(exists=False), want, ME)
    assert drift.table_missing
    assert drift.unenforced == 2
    plan = LAYOUT.repair(KernelTable(exists=False), drift, want, ME)
    assert len(plan) == 2
    assert not any("element" in json.dumps(c) for c in plan[0])
    added = [c["add"]["element"] for c in plan[1]]
    assert {a["name"] for a in added} == {"ban4", "ban6"}


def test_missing_extra_and_mistimed_elements_are_found() -> None:
    """An element the book lost is extra, one the kernel lost is missing, one with a far
    timeout is re-timed; ones within SLACK of expiry count neither way."""
    kernel = LAYOUT.parse(
        listing(
            LAYOUT,
            ME,
            {
                "ban4": ("203.0.113.1", 3000),  # not in the book: extra
                "ban4#2": ("203.0.113.2", 50),  # the book says 3000: re-timed
                "ban4#3": ("203.0.113.3", 1),  # about to go: not extra
            },
        )
    )
    want = {"203.0.113.2": 3000.0, "203.0.113.4": 3000.0, "203.0.113.5": SLACK / 2}
    drift = LAYOUT.diff(kernel, want, ME)
    assert drift.extra == ("203.0.113.1",)
    assert drift.missing == ("203.0.113.4",)  # .5 expires within SLACK: not missing
    assert drift.expiry == ("203.0.113.2",)
    assert drift.unenforced == 1
    (commands,) = LAYOUT.repair(kernel, drift, want, ME)
    verbs = [(next(iter(c)), next(iter(c.values()))["element"]["name"]) for c in commands]
    assert verbs == [("delete", "ban4"), ("add", "ban4")]
    deleted = commands[0]["delete"]["element"]["elem"]
    assert deleted == ["203.0.113.1", "203.0.113.2"]


def test_a_flushed_chain_leaves_every_ban_unenforced() -> None:
    """Elements in place but the chain's rules gone: nothing is dropped, every ban counts
    as unenforced and the declaration is made again."""
    listed = listing(LAYOUT, ME, {"ban4": ("203.0.113.7", 3000)})
    listed["nftables"] = [i for i in listed["nftables"] if "rule" not in i]
    kernel = LAYOUT.parse(listed)
    drift = LAYOUT.diff(kernel, {"203.0.113.7": 3000.0}, ME)
    assert drift.declaration == ("chain input's rules changed",)
    assert drift.unenforced == 1
    plan = LAYOUT.repair(kernel, drift, {"203.0.113.7": 3000.0}, ME)
    assert len(plan) == 1  # the declaration; the element is there already


def test_another_owner_or_prefix_rewrites_the_declaration() -> None:
    """A stale owner's marker only needs rewriting (no ban unenforced); a changed
    ipv6_prefix changes the masked rule, and the old networks move to the interval set."""
    other = Owner(1, 1)
    kernel = LAYOUT.parse(listing(LAYOUT, other, {"ban6net": ("2001:db8:1:2::", 3000)}))
    drift = LAYOUT.diff(kernel, {"2001:db8:1:2::/64": 3000.0}, ME)
    assert drift.marker
    assert not drift.changed
    assert drift.unenforced == 0
    wide = Layout(LAYOUT.table, 48)
    drift = wide.diff(wide.parse(listing(LAYOUT, ME, {})), {}, ME)
    assert drift.declaration == ("chain input's rules changed",)
    kernel = wide.parse(listing(LAYOUT, ME, {"ban6net": ("2001:db8:1:2::", 3000)}))
    drift = wide.diff(kernel, {"2001:db8:1:2::/64": 3000.0}, ME)
    assert drift.missing == ("2001:db8:1:2::/64",)  # now in the interval set ban6
    assert drift.extra == ("2001:db8:1:2::/48",)  # ban6net's element, read under /48


def test_a_set_declared_otherwise_is_made_anew() -> None:
    """A set someone re-declared (another type) is deleted and declared again, its rules
    first, and its bans added again afterwards."""
    listed = listing(LAYOUT, ME, {"ban4": ("203.0.113.7", 3000)})
    for item in listed["nftables"]:
        if item.get("set", {}).get("name") == "ban4":
            item["set"]["flags"] = ["interval", "timeout"]
    kernel = LAYOUT.parse(listed)
    want = {"203.0.113.7": 3000.0}
    drift = LAYOUT.diff(kernel, want, ME)
    assert drift.declaration == ("set ban4 declared otherwise",)
    assert drift.unenforced == 1
    declare, elements = LAYOUT.repair(kernel, drift, want, ME)
    verbs = [next(iter(c)) + " " + next(iter(next(iter(c.values())))) for c in declare]
    assert verbs.index("flush chain") < verbs.index("delete set") < verbs.index("add set")
    assert elements == [
        {"add": {"element": {**LAYOUT._obj(name="ban4"), "elem": [_timed("203.0.113.7")]}}}
    ]


def _timed(value: str) -> dict[str, Any]:
    return {"elem": {"val": value, "timeout": 3000}}


def test_a_large_repair_goes_in_chunks() -> None:
    """More than CHUNK missing bans are added in several transactions, each within CHUNK."""
    want = {f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}": 3000.0 for i in range(CHUNK * 2 + 5)}
    kernel = LAYOUT.parse(listing(LAYOUT, ME, {}))
    plan = LAYOUT.repair(kernel, LAYOUT.diff(kernel, want, ME), want, ME)
    sizes = [len(c["add"]["element"]["elem"]) for tx in plan for c in tx]
    assert sizes == [CHUNK, CHUNK, 5]
    assert KernelTable(exists=False).targets == {}


def test_changes_renew_by_delete_and_add_per_set() -> None:
    """A batch of new bans is one command per set and verb: added bare, deleted, added
    with its timeout (a renewed ban gets its new timeout; a deleted one may be gone)."""
    commands = LAYOUT.changes({"203.0.113.7": 60.0, "2001:db8::/64": 90.4}, ["203.0.113.9"])
    verbs = [(next(iter(c)), next(iter(c.values()))["element"]["name"]) for c in commands]
    assert verbs == [
        ("add", "ban4"),
        ("add", "ban6net"),
        ("delete", "ban4"),
        ("delete", "ban6net"),
        ("add", "ban4"),
        ("add", "ban6net"),
    ]
    assert commands[0]["add"]["element"]["elem"] == ["203.0.113.9", "203.0.113.7"]
    assert commands[5]["add"]["element"]["elem"] == [{"elem": {"val": "2001:db8::", "timeout": 90}}]


# -- against the real nft -----------------------------------------------------------


@pytest.fixture
def ns() -> Iterator[Netns]:
    require_netns()
    holder = Netns()
    yield holder
    holder.close()


def nft(ns: Netns, commands: list[dict[str, Any]]) -> None:
    done = ns.run("nft", "-j", "-f", "-", check=False, stdin=json.dumps({"nftables": commands}))
    assert done.returncode == 0, done.stderr


def listed(ns: Netns, layout: Layout) -> dict[str, Any]:
    out = ns.run("nft", "-j", "list", "table", "inet", layout.table).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def from_nothing(want: dict[str, float]) -> list[list[dict[str, Any]]]:
    """The transactions that make `want` from no table."""
    gone = KernelTable(exists=False)
    return LAYOUT.repair(gone, LAYOUT.diff(gone, want, ME), want, ME)


@pytest.mark.system
def test_real_nft_reads_back_in_step(ns: Netns) -> None:
    """Declared, repaired from nothing and listed by the real nft, the table is in step:
    the parser reads what nft prints (this nft's version) as the layout wrote it."""
    want = {
        "203.0.113.7": 3000.0,
        "192.0.2.0/24": 3000.0,
        "2001:db8:1:2::/64": 3000.0,
        "64:ff9b::cb00:7107/128": 3000.0,
        "2001:db8::/32": 3000.0,
    }
    for tx in from_nothing(want):
        nft(ns, tx)
    kernel = LAYOUT.parse(listed(ns, LAYOUT))
    assert kernel.owner == ME
    drift = LAYOUT.diff(kernel, want, ME)
    assert not drift.changed, drift.summary()
    assert not drift.marker
    assert set(kernel.targets) == set(want)


@pytest.mark.system
def test_real_nft_repairs_a_table_kept_with_interval_elements(ns: Netns) -> None:
    """A restart with the table kept (IPv6 interval elements in it) repairs only the
    difference: no flush, so nft 1.0.6's interval-set failure cannot happen."""
    first = {"2001:db8::/32": 3000.0, "2001:db9::/32": 3000.0}
    for tx in from_nothing(first):
        nft(ns, tx)
    again = Owner(ME.pid + 1, ME.start + 1)  # the restarted daemon
    want = {"2001:db8::/32": 2000.0, "2001:dba::/32": 3000.0}
    kernel = LAYOUT.parse(listed(ns, LAYOUT))
    drift = LAYOUT.diff(kernel, want, again)
    assert drift.marker
    assert drift.missing == ("2001:dba::/32",)
    assert drift.extra == ("2001:db9::/32",)
    assert drift.expiry == ("2001:db8::/32",)
    for tx in LAYOUT.repair(kernel, drift, want, again):
        nft(ns, tx)
    kernel = LAYOUT.parse(listed(ns, LAYOUT))
    assert kernel.owner == again
    assert set(kernel.targets) == set(want)
    assert not LAYOUT.diff(kernel, want, again).changed
