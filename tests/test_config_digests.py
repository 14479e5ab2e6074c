"""No silent loss of the digest sink: a [[sink]] table replaces the default smtp sink, so a
configuration left with no sink that takes digests is refused unless it says so."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from helpers import WRAPALERT, Running, write_config

from wrapalert import config
from wrapalert.confparse import ConfigError
from wrapalert.daemon.server import Server

NFT_ONLY = '[daemon]\nhostname = "h"\n\n[[sink]]\ntype = "nftables"\n'


def test_a_config_with_no_digest_sink_is_refused_with_the_fix() -> None:
    """README's nftables example alone: refused, naming the line, the cause and the smtp
    table to add back (or the key that says no digest is meant)."""
    with pytest.raises(ConfigError) as caught:
        config.loads(NFT_ONLY, "w.toml")
    message = str(caught.value)
    assert message.startswith("w.toml:5: [[sink]]: no sink takes digests (maildir, sendmail, smtp)")
    assert "replaces the default smtp sink" in message
    assert '[[sink]]\ntype = "smtp"\nto = ["root"]' in message
    assert "enabled = false in [digest]" in message


@pytest.mark.parametrize("kind", ["smtp", "sendmail", "maildir"])
def test_any_digest_sink_beside_it_is_enough(kind: str) -> None:
    cfg = config.loads(NFT_ONLY + f'\n[[sink]]\ntype = "{kind}"\n', "w.toml")
    assert [s.name for s in cfg.sinks] == ["nftables", kind]


def test_digest_enabled_false_says_it_is_meant() -> None:
    cfg = config.loads(NFT_ONLY + "\n[digest]\nenabled = false\n", "w.toml")
    assert not cfg.digest.enabled
    assert [s.name for s in cfg.sinks] == ["nftables"]


def test_digest_enabled_false_with_a_digest_sink_is_refused() -> None:
    """The key and a sink that takes digests contradict each other: refused, naming both."""
    text = '[digest]\nenabled = false\n\n[[sink]]\ntype = "maildir"\npath = "/tmp/M"\n'
    with pytest.raises(ConfigError, match=r"w\.toml:2: \[digest\] enabled: .*'maildir'"):
        config.loads(text, "w.toml")


def test_digest_enabled_false_without_sinks_is_refused() -> None:
    """Without [[sink]] tables the default smtp sink takes digests: false says otherwise."""
    with pytest.raises(
        ConfigError, match=r"without \[\[sink\]\] tables the default smtp sink takes digests"
    ):
        config.loads("[digest]\nenabled = false\n", "w.toml")


def test_the_default_config_and_the_packaged_one_pass() -> None:
    """No file, and the packaged file (every default commented out): the smtp sink."""
    assert config.Config().digest.enabled
    packaged = Path(__file__).parent.parent / "packaging" / "wrapalert.toml"
    assert [s.name for s in config.load(packaged).sinks] == ["smtp"]


def test_check_config_and_run_refuse_it(sockdir: Path) -> None:
    """check-config and `wrapalert run` exit 1 with the same message."""
    path = write_config(sockdir, sinks='[[sink]]\ntype = "nftables"\n')
    for verb in ("check-config", "run"):
        result = subprocess.run(
            [WRAPALERT, verb, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, verb
        assert "no sink takes digests" in result.stderr, verb


def test_a_reload_to_a_config_without_digest_sink_is_refused(sockdir: Path) -> None:
    """A reload that would drop the digest sink is refused; the old config stays."""
    path = write_config(sockdir)

    async def scenario() -> tuple[bool, tuple[str, ...]]:
        server = Server(config.load(path), config_path=path)
        async with Running(server):
            path.write_text(path.read_text().replace('type = "maildir"', 'type = "nftables"'))
            reloaded = server.reload()
            return reloaded, tuple(s.name for s in server.cfg.sinks)

    reloaded, sinks = asyncio.run(scenario())
    assert not reloaded
    assert sinks == ("maildir",)
