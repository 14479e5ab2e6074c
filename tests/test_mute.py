"""Ignore lists and silences: what matches, and that muted events are counted, not sent."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from pathlib import Path

import pytest
from helpers import (
    WRAPALERT,
    DaemonProcess,
    Deliveries,
    Running,
    client,
    event,
    maildir_messages,
    make_config,
    wait_until,
    write_config,
)
from timing import ManualClock

from wrapalert import config
from wrapalert.confparse import ConfigError
from wrapalert.daemon.server import Server
from wrapalert.daemon.silences import Silence, Silences
from wrapalert.daemon.store import Store
from wrapalert.match import Matcher, MatcherError
from wrapalert.pipeline.mute import Mute


def silence(*texts: str, expires: float = 100.0) -> Silence:
    return Silence(1, tuple(Matcher.parse(t) for t in texts), 0.0, expires)


def book(tmp_path: Path, *silences: Silence) -> Silences:
    """A silence book holding `silences` (its state database never opened)."""
    found = Silences(Store(tmp_path), ManualClock())
    found.live = list(silences)
    return found


def test_client_matcher_takes_networks_and_addresses(tmp_path: Path) -> None:
    """client= matches an address inside its CIDR network (IPv4 and IPv6) and nothing else."""
    mute = book(tmp_path, silence("client=203.0.113.0/24"), silence("client=2001:db8::/32"))
    assert mute.mutes(event(addr="203.0.113.200"), 1.0)
    assert mute.mutes(event(addr="2001:db8:1::5"), 1.0)
    assert not mute.mutes(event(addr="198.51.100.1"), 1.0)
    assert not mute.mutes(event(addr="unknown"), 1.0)


def test_every_matcher_of_a_silence_must_match(tmp_path: Path) -> None:
    """daemon=sshd client=NET silences sshd from NET, not other daemons from it."""
    mute = book(tmp_path, silence("daemon=sshd", "client=203.0.113.0/24"))
    assert mute.mutes(event("sshd", "203.0.113.9"), 1.0)
    assert not mute.mutes(event("vsftpd", "203.0.113.9"), 1.0)


def test_expired_silences_do_not_match(tmp_path: Path) -> None:
    """A silence stops matching at its expiry time."""
    mute = book(tmp_path, silence("daemon=sshd", expires=10.0))
    assert mute.mutes(event(), 9.9)
    assert not mute.mutes(event(), 10.0)


def test_ignore_lists_match_daemons_and_networks() -> None:
    """[ignore] networks and daemons mute events (the pipeline counts them "ignored",
    ahead of any silence: tests/test_chain.py)."""
    mute = Mute(networks=(ipaddress.ip_network("10.0.0.0/8"),), daemons=("in.identd",))
    assert mute.mutes(event("in.identd"), 1.0)
    assert mute.mutes(event(addr="10.1.2.3"), 1.0)
    assert not mute.mutes(event(), 1.0)


def test_ignore_table_reaches_mute_parsed() -> None:
    """[ignore] networks are ipaddress networks once config has read them: Mute takes them
    as they are, and an address inside one (not the text) is what it ignores."""
    cfg = config.loads('[ignore]\nnetworks = ["10.1.0.0/16", "2001:db8::1/64"]\n')
    assert cfg.ignore.networks == (
        ipaddress.IPv4Network("10.1.0.0/16"),
        ipaddress.IPv6Network("2001:db8::/64"),
    )
    mute = Mute(cfg.ignore.networks, cfg.ignore.daemons)
    assert mute.mutes(event(addr="10.1.200.3"), 1.0)
    assert mute.mutes(event(addr="2001:db8::77"), 1.0)
    assert not mute.mutes(event(addr="10.2.0.1"), 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sshd", "write field=value"),
        ("password=x", "unknown field"),
        ("client=not-a-net", "not an address or network"),
        ("daemon=", "write field=value"),
    ],
)
def test_bad_matchers_are_explained(text: str, message: str) -> None:
    """A matcher that cannot work is refused with the reason."""
    with pytest.raises(MatcherError, match=message):
        Matcher.parse(text)


def test_ignore_table_is_validated() -> None:
    """A bad network in [ignore] is a config error naming its line."""
    with pytest.raises(ConfigError, match=r":2: \[ignore\] networks: 'ten' is not"):
        config.loads('[ignore]\nnetworks = ["ten"]\n', "f.toml")


def wrapalert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WRAPALERT, *args], capture_output=True, text=True, check=False, timeout=30
    )


def test_silence_commands_mute_count_and_survive_a_restart(sockdir: Path) -> None:
    """`silence add` mutes matching events (counted as silenced, shown in the next digest),
    `silence list` shows it across a restart, `silence expire` ends it."""
    path = write_config(sockdir)
    daemon = DaemonProcess(sockdir, path)
    cfg = str(path)
    try:
        daemon.start()
        added = wrapalert(
            "silence",
            "add",
            "-c",
            cfg,
            "--for",
            "2h",
            "--comment",
            "scanner",
            "daemon=sshd",
            "client=203.0.113.0/24",
        )
        assert added.returncode == 0, added.stderr
        assert "silence 1: daemon=sshd client_addr=203.0.113.0/24 until" in added.stdout
        sock = f"socket={sockdir}/notify.sock"
        client("d=sshd", "a=203.0.113.7", sock)
        client("d=sshd", "a=203.0.113.8", sock)
        client("d=vsftpd", "a=203.0.113.7", sock)
        wait_until(lambda: len(maildir_messages(sockdir / "Maildir")) == 1, what="a digest")
        status = daemon.status()
        assert (status["received"], status["silenced"]) == (3, 2)
        (msg,) = maildir_messages(sockdir / "Maildir")
        assert msg["X-Wrapalert-Events"] == "1"
        daemon.stop()
        daemon.start()
        listed = wrapalert("silence", "list", "-c", cfg)
        assert "daemon=sshd client_addr=203.0.113.0/24  # scanner" in listed.stdout
        assert wrapalert("silence", "expire", "-c", cfg, "1").returncode == 0
        assert "no active silences" in wrapalert("silence", "list", "-c", cfg).stdout
        assert wrapalert("silence", "expire", "-c", cfg, "1").returncode == 1
    finally:
        daemon.close()


def test_silence_add_refuses_bad_input_before_asking_the_daemon(sockdir: Path) -> None:
    """A bad matcher or duration is a usage error (exit 2), named, with no daemon needed."""
    cfg = str(write_config(sockdir))
    bad = wrapalert("silence", "add", "-c", cfg, "--for", "2h", "client=nowhere")
    assert bad.returncode == 2
    assert "not an address or network" in bad.stderr
    assert wrapalert("silence", "add", "-c", cfg, "--for", "soon", "daemon=x").returncode == 2


def test_silenced_events_are_summarised_in_the_next_digest(sockdir: Path) -> None:
    """The digest after silenced events carries how many were silenced."""

    async def scenario() -> Deliveries:
        seen = Deliveries()
        server = Server(make_config(sockdir), on_delivery=seen)
        sock = f"socket={server.cfg.daemon.socket}"
        async with Running(server):
            server.silences.add((Matcher.parse("daemon=sshd"),), 60)
            for _ in range(4):
                await asyncio.to_thread(client, "d=sshd", "a=192.0.2.1", sock)
            await asyncio.to_thread(client, "d=vsftpd", "a=192.0.2.1", sock)
            await seen.wait_events(1)
        return seen

    (digest,) = asyncio.run(scenario()).digests
    assert (digest.events, digest.silenced) == (1, 4)
