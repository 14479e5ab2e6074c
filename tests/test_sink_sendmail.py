"""The sendmail sink with real programs: what it pipes, and how exit statuses map."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import pytest
from helpers import one_group, ticking

from wrapalert import config
from wrapalert.confparse import ConfigError
from wrapalert.sinks import build
from wrapalert.sinks.base import PermanentSinkError, TransientSinkError
from wrapalert.sinks.sendmail import SendmailSink, SendmailSinkConfig


def sink(*command: str, timeout: float = 10.0) -> SendmailSink:
    built = build(SendmailSinkConfig(command=command, to=("root@localhost",), timeout=timeout))
    assert isinstance(built, SendmailSink)
    return built


def test_the_message_is_piped_whole_with_local_line_ends(tmp_path: Path) -> None:
    out = tmp_path / "piped.eml"
    asyncio.run(sink("/bin/sh", "-c", f"cat > {out}").send(one_group(3)))
    raw = out.read_bytes()
    assert b"\r\n" not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "root@localhost"
    assert msg["X-Wrapalert-Events"] == "3"
    assert msg.get_body(("plain",)) is not None


@pytest.mark.parametrize(
    ("script", "error", "words"),
    [
        ("echo 'queue locked' >&2; exit 75", TransientSinkError, "exited 75: queue locked"),
        ("echo 'bad recipient' >&2; exit 67", PermanentSinkError, "exited 67: bad recipient"),
        ("exit 1", PermanentSinkError, "exited 1: no message"),
    ],
)
def test_exit_statuses_are_read_as_sysexits(
    script: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        asyncio.run(sink("/bin/sh", "-c", f"cat > /dev/null; {script}").send(one_group()))
    assert words in str(caught.value)


def test_a_missing_program_is_a_config_problem() -> None:
    with pytest.raises(PermanentSinkError, match="No such file"):
        asyncio.run(sink("/nonexistent/sendmail", "-t").send(one_group()))


def test_a_hung_command_is_killed_and_retried_later() -> None:
    """A command that never finishes is killed after `timeout`; the loop ran meanwhile."""
    hung = sink("/bin/sleep", "30", timeout=0.5).send(one_group())
    elapsed, ticks, error = asyncio.run(ticking(hung))
    assert isinstance(error, TransientSinkError)
    assert "no answer within 0.5s" in str(error)
    assert elapsed < 5
    assert ticks > 10


def test_config_reads_and_checks_the_command(tmp_path: Path) -> None:
    path = tmp_path / "wrapalert.toml"
    path.write_text(
        '[[sink]]\ntype = "sendmail"\ncommand = ["/usr/sbin/sendmail", "-t", "-oi"]\n'
        'to = ["root"]\ntimeout = "20s"\n'
    )
    (cfg,) = config.load(path).sinks
    assert cfg == SendmailSinkConfig(timeout=20.0)
    for command, words in (
        ('["sendmail", "-t"]', "absolute program"),
        ("[]", "absolute program"),
        ('["/usr/sbin/sendmail", "-t\\n"]', "control character"),
    ):
        path.write_text(f'[[sink]]\ntype = "sendmail"\ncommand = {command}\n')
        with pytest.raises(ConfigError, match=words) as caught:
            config.load(path)
        assert str(path) in str(caught.value)
