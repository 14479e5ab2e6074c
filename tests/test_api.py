"""The control API alone (daemon/api.py): requests decoded into typed commands, each
passed to the owner of its rule, refusals sent back; over a real control socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from timing import ManualClock

from wrapalert import config
from wrapalert.daemon import api, control
from wrapalert.daemon.bans import Bans
from wrapalert.daemon.server import Server
from wrapalert.daemon.silences import Silences
from wrapalert.daemon.stats import Stats
from wrapalert.daemon.store import Store
from wrapalert.sinks.nftables import NftablesSink, NftablesSinkConfig


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"matchers": "daemon=sshd", "seconds": 60}, "at least one field=value matcher"),
        ({"matchers": [], "seconds": 60}, "at least one field=value matcher"),
        ({"matchers": [7], "seconds": 60}, "at least one field=value matcher"),
        ({"matchers": ["daemon=sshd"], "seconds": "60"}, "duration of up to a year"),
        ({"matchers": ["daemon=sshd"], "seconds": True}, "duration of up to a year"),
        ({"matchers": ["client=nowhere"], "seconds": 60}, "not an address or network"),
    ],
)
def test_a_bad_silence_request_is_refused_while_decoding(
    request_: dict[str, Any], error: str
) -> None:
    """A silence request whose values are not what the command takes is refused, naming
    the problem, before the book is asked."""
    with pytest.raises(control.ControlError, match=error):
        api.SilenceAdd.decode(request_)


def test_ban_and_expire_requests_are_typed_before_they_are_passed_on() -> None:
    """An address must be text and a duration a number (never a boolean: JSON true is an
    int to Python), `force` only a real true, an id an integer."""
    assert api.BanAdd.decode({"addr": "203.0.113.7"}) == api.BanAdd("203.0.113.7", None, False)
    assert api.BanAdd.decode({"addr": "x", "seconds": 60, "force": 1}).force is False
    with pytest.raises(control.ControlError, match="name an address"):
        api.BanDel.decode({"addr": ["203.0.113.7"]})
    for seconds in (True, "60", [60]):
        with pytest.raises(control.ControlError, match="a number of seconds"):
            api.BanAdd.decode({"addr": "203.0.113.7", "seconds": seconds})
    for silence_id in ("1", True, 1.0):
        with pytest.raises(control.ControlError, match="no active silence with id"):
            api.SilenceExpire.decode({"id": silence_id})


@pytest.mark.parametrize(
    ("addr", "error"),
    [
        (["203.0.113.7"], "name an address"),
        (None, "name an address"),
        ("203.0.113.7/33", "not an address or a network"),
        ("sshd", "not an address or a network"),
        ("203.0.113.7\x1b[2J", "name an address or a network"),
        ("1" * 200, "name an address or a network"),
    ],
)
def test_an_explain_request_names_an_address_or_a_network(addr: object, error: str) -> None:
    """`explain` takes an address or a network (operator input, checked again here: the
    socket is not the command line); anything else is refused naming what to write, and
    a network is read without its host bits, a mapped address as IPv4."""
    with pytest.raises(control.ControlError, match=error):
        api.Explain.decode({"addr": addr})
    assert str(api.Explain.decode({"addr": "203.0.113.7/24"}).net) == "203.0.113.0/24"
    assert str(api.Explain.decode({"addr": "::ffff:203.0.113.7"}).net) == "203.0.113.7/32"


def serving(tmp_path: Path) -> tuple[Server, Silences, Bans]:
    """A daemon's parts (not running) for the commands to call."""
    cfg = config.loads(f"""
[daemon]
state_dir = "{tmp_path}/state"
[[sink]]
type = "maildir"
path = "{tmp_path}/Maildir"
""")
    daemon = Server(cfg)
    daemon.store.open()
    return daemon, daemon.silences, daemon.bans


def ask(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    try:
        return control.request(path, cmd, **args)
    except control.ControlError as exc:
        return {"ok": False, "error": str(exc)}


def test_commands_reach_their_owners_and_refusals_come_back(tmp_path: Path) -> None:
    """Over the control socket: a silence added, listed and expired in the book; a ban
    without an nftables sink and a silence of no time refused with the book's words;
    status and flush answered by the daemon, explain by the explainer."""
    daemon, silences, bans = serving(tmp_path)
    path = tmp_path / "control.sock"

    async def scenario() -> list[dict[str, Any]]:
        commands = api.commands(daemon, silences, bans, daemon.explainer, daemon.canaries)
        server = await control.serve(path, commands)
        try:
            steps: list[tuple[str, dict[str, Any]]] = [
                ("silence_add", {"matchers": ["daemon=sshd"], "seconds": 60, "comment": "x"}),
                ("silence_list", {}),
                ("silence_add", {"matchers": ["daemon=sshd"], "seconds": 0}),
                ("silence_expire", {"id": 1}),
                ("silence_expire", {"id": 1}),
                ("ban_add", {"addr": "203.0.113.7"}),
                ("ban_list", {}),
                ("flush", {}),
                ("status", {}),
                ("explain", {"addr": "203.0.113.7"}),
                ("explain", {"addr": "nowhere"}),
            ]
            return [await asyncio.to_thread(ask, path, cmd, **args) for cmd, args in steps]
        finally:
            server.close()

    (
        added,
        listed,
        no_time,
        expired,
        again,
        ban,
        bans_listed,
        flushed,
        status,
        explained,
        nowhere,
    ) = asyncio.run(scenario())
    assert (added["id"], added["matchers"], added["durable"]) == (1, ["daemon=sshd"], True)
    assert [s["comment"] for s in listed["silences"]] == ["x"]
    assert no_time["error"] == "a silence needs a duration of up to a year"
    assert expired["id"] == 1
    assert again["error"] == "no active silence with id 1"
    assert silences.in_force() == []
    assert ban["error"] == "no nftables sink is configured"
    assert (bans_listed["mode"], bans_listed["bans"]) == (None, [])
    assert (flushed["digests"], flushed["events"]) == (0, 0)
    assert status["status"]["received"] == 0
    answer = explained["explanation"]
    assert (answer["query"], answer["known"]) == ("203.0.113.7", False)
    assert answer["verdicts"][0]["why"] == "no nftables sink"
    assert "not an address or a network" in nowhere["error"]


def test_a_ban_refused_by_the_policy_is_the_replys_error(tmp_path: Path) -> None:
    """`ban add` of a network without --force: the policy's words, nothing in the book."""
    store = Store(tmp_path)
    store.open()
    bans = Bans(store, ManualClock(), Stats())
    bans.configure(NftablesSink(NftablesSinkConfig(mode="dry-run")))
    with pytest.raises(control.ControlError, match="IPv4 bans are single addresses"):
        asyncio.run(api.BanCommands(bans).add({"addr": "203.0.113.0/24"}))
    assert bans.policy.active == {}
