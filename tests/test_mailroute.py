"""Where root's mail really goes (wrapalert/mailroute.py), on trees made in tmp dirs, and
what check-config and test-alert say of it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import WRAPALERT, Running, SmtpServer, make_config, write_config

from wrapalert import config, mailroute
from wrapalert.cli import mail_notes
from wrapalert.confparse import SinkConfig
from wrapalert.daemon.server import Server
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.sinks.sendmail import SendmailSinkConfig
from wrapalert.sinks.smtp import SmtpSinkConfig

DEBIAN_ALIASES = "# /etc/aliases\nmailer-daemon: postmaster\npostmaster: root\nnobody: root\n"
MAIL4ROOT = """\
### router/mmm_mail4root
#################################

mail4root:
  debug_print = "R: mail4root for $local_part@$domain"
  driver = redirect
  domains = +local_domains
  data = /var/mail/mail
  file_transport = address_file
  local_parts = root
"""


def tree(base: Path, files: dict[str, str], executables: tuple[str, ...] = ()) -> Path:
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    for name in executables:
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text("#!/bin/sh\n")
    return base


def exim(base: Path, aliases: str = DEBIAN_ALIASES, extra: dict[str, str] | None = None) -> Path:
    files = {
        "etc/aliases": aliases,
        "etc/exim4/update-exim4.conf.conf": "dc_eximconfig_configtype='local'\n",
        "etc/exim4/conf.d/router/mmm_mail4root": MAIL4ROOT,
        **(extra or {}),
    }
    return tree(base, files, ("usr/sbin/exim4",))


def test_debian_exim_without_a_root_alias_files_it_in_var_mail_mail(tmp_path: Path) -> None:
    """Stock Debian: exim4's mail4root router writes root's mail to /var/mail/mail."""
    route = mailroute.root_route(exim(tmp_path))
    assert route.reaches_person is False
    assert route.mailbox == tmp_path / "var/mail/mail"
    assert "mail4root" in route.where
    assert route.fix == mailroute.FIX
    assert "root: you" in route.fix
    assert "newaliases" in route.fix


def test_the_mail4root_file_is_read_from_exims_config(tmp_path: Path) -> None:
    """A changed mail4root data = line is what is reported."""
    moved = MAIL4ROOT.replace("/var/mail/mail", "/var/mail/postmaster")
    route = mailroute.root_route(
        exim(tmp_path, extra={"etc/exim4/conf.d/router/mmm_mail4root": moved})
    )
    assert route.mailbox == tmp_path / "var/mail/postmaster"


def test_a_root_alias_reaches_a_person(tmp_path: Path) -> None:
    route = mailroute.root_route(exim(tmp_path, DEBIAN_ALIASES + "Root: alice\n"))
    assert (route.reaches_person, route.fix) == (True, None)
    assert route.mailbox == tmp_path / "var/mail/alice"
    assert "alice" in route.where


def test_a_continued_alias_line_and_several_targets(tmp_path: Path) -> None:
    route = mailroute.root_route(exim(tmp_path, "root: alice,\n  bob@example.org\n"))
    assert route.reaches_person is True
    assert "alice, bob@example.org" in route.where
    assert route.mailbox is None  # two targets: no one file


def test_root_aliased_to_itself_does_not_count(tmp_path: Path) -> None:
    assert mailroute.root_route(exim(tmp_path, "root: \\root\n")).reaches_person is False


def test_root_forward_file_counts(tmp_path: Path) -> None:
    route = mailroute.root_route(exim(tmp_path, extra={"root/.forward": "alice@example.org\n"}))
    assert route.reaches_person is True
    assert "/root/.forward" in route.where


def test_exim_satellite_sends_it_to_the_smarthost(tmp_path: Path) -> None:
    conf = "dc_eximconfig_configtype='satellite'\ndc_smarthost='mx.example.org::587'\n"
    route = mailroute.root_route(exim(tmp_path, extra={"etc/exim4/update-exim4.conf.conf": conf}))
    assert route.reaches_person is None
    assert "mx.example.org::587" in route.where


def test_postfix_without_a_root_alias(tmp_path: Path) -> None:
    base = tree(tmp_path, {"etc/aliases": DEBIAN_ALIASES, "etc/postfix/main.cf": ""})
    route = mailroute.root_route(base)
    assert (route.mta, route.reaches_person, route.fix) == ("postfix", False, mailroute.FIX)
    assert mailroute.root_route(tree(tmp_path, {"etc/aliases": "root: alice\n"})).reaches_person


def test_no_mta_at_all(tmp_path: Path) -> None:
    route = mailroute.root_route(tree(tmp_path, {"etc/aliases": DEBIAN_ALIASES}))
    assert (route.mta, route.reaches_person) == (None, False)
    assert "no local MTA" in route.where
    assert route.fix is not None
    assert "exim4-daemon-light" in route.fix


def test_another_mta_is_named_and_left_to_the_admin(tmp_path: Path) -> None:
    base = tree(tmp_path, {"etc/aliases": ""}, ("usr/sbin/nullmailer-inject",))
    (base / "usr/sbin/sendmail").symlink_to(base / "usr/sbin/nullmailer-inject")
    route = mailroute.root_route(base)
    assert (route.mta, route.reaches_person) == ("nullmailer-inject", None)


@pytest.mark.parametrize(
    ("recipients", "expected"),
    [
        (["root"], True),
        (["ROOT@web1"], True),
        (["root@localhost"], True),
        (["root@web1.example.org"], True),  # /etc/mailname
        (["admin@example.org", "root"], True),
        (["root@example.org"], False),
        (["alice"], False),
        (["rooted@web1"], False),
    ],
)
def test_recipients_that_are_root_on_this_host(
    tmp_path: Path, recipients: list[str], *, expected: bool
) -> None:
    base = tree(tmp_path, {"etc/mailname": "web1.example.org\n"})
    names = mailroute.local_names(base, "web1")
    assert mailroute.to_root(recipients, names) is expected


# --- what the commands say --------------------------------------------------------------


def cfg_with(*sinks: SinkConfig, base: Path) -> config.Config:
    cfg = make_config(base, *sinks)
    return replace(cfg, daemon=replace(cfg.daemon, hostname="web1"))


def test_check_config_warns_for_an_smtp_sink_to_root_on_this_host(tmp_path: Path) -> None:
    lines = mail_notes(cfg_with(SmtpSinkConfig(), base=tmp_path), exim(tmp_path / "root"))
    assert lines[0].startswith("  warning: sink smtp mails root, and exim4 delivers it to ")
    assert lines[1] == f"    fix: {mailroute.FIX}"


def test_a_sendmail_sink_to_root_is_noted_too(tmp_path: Path) -> None:
    root = exim(tmp_path / "root", DEBIAN_ALIASES + "root: alice\n")
    (line,) = mail_notes(cfg_with(SendmailSinkConfig(), base=tmp_path), root)
    assert line.startswith("  note: sink sendmail mails root, and exim4 delivers it as ")


@pytest.mark.parametrize(
    "sink",
    [
        SmtpSinkConfig(host="mx.example.org"),  # another host's MTA decides
        SmtpSinkConfig(to=("alice@example.org",)),
        MaildirSinkConfig(path=Path("/tmp/M")),
    ],
)
def test_sinks_that_do_not_mail_root_here_get_no_note(tmp_path: Path, sink: SinkConfig) -> None:
    assert mail_notes(cfg_with(sink, base=tmp_path), exim(tmp_path / "root")) == []


def test_check_config_prints_this_hosts_route(sockdir: Path) -> None:
    """On this machine, whatever its MTA: check-config says what mailroute finds for /."""
    path = write_config(sockdir, sinks='[[sink]]\ntype = "smtp"\nto = ["root"]\n')
    out = subprocess.run(
        [WRAPALERT, "check-config", "-c", str(path)], capture_output=True, text=True, check=True
    ).stdout
    route = mailroute.root_route(Path("/"))
    assert f"mails root, and {route.where}" in out
    if route.fix:
        assert f"    fix: {route.fix}" in out


def test_test_alert_says_where_roots_copy_went(sockdir: Path) -> None:
    """test-alert's 'delivered' is the MTA's word: it adds where root's mail ends up."""

    async def scenario() -> str:
        async with SmtpServer() as smtp:
            path = write_config(
                sockdir,
                sinks=f'[[sink]]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {smtp.port}\n'
                'to = ["root"]\n',
            )
            async with Running(Server(config.load(path), config_path=path)):
                result = await asyncio.create_subprocess_exec(
                    WRAPALERT, "test-alert", "-c", str(path),
                    stdout=asyncio.subprocess.PIPE, env={**os.environ},
                )  # fmt: skip
                out, _ = await result.communicate()
                return out.decode()

    out = asyncio.run(scenario())
    route = mailroute.root_route(Path("/"))
    assert out.splitlines()[0].split() == ["smtp", "delivered"]
    assert f"sink smtp mails root, and {route.where}" in out


POSTINST = Path(__file__).parent.parent / "packaging" / "debian" / "postinst"


def run_postinst(tmp_path: Path, wrapalert: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The package's postinst (its own part: debhelper's snippets left out), with `wrapalert`
    on PATH standing for the installed command."""
    tmp_path.mkdir(exist_ok=True)
    script = tmp_path / "postinst"
    script.write_text(POSTINST.read_text().replace("#DEBHELPER#", ""))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wrapalert").symlink_to(wrapalert)
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_postinst_says_where_roots_mail_goes_and_what_comes_next(tmp_path: Path) -> None:
    """A fresh install prints check-config --mail's note (for the built-in config: the smtp
    sink to root) and the hosts-deny-line --install step; an upgrade only the note."""
    route = mailroute.root_route(Path("/"))
    fresh = run_postinst(tmp_path, WRAPALERT, "configure", "")
    assert fresh.returncode == 0, fresh.stderr
    assert f"wrapalert: {'warning' if route.reaches_person is False else 'note'}: sink smtp " in (
        fresh.stdout
    )
    assert "wrapalert hosts-deny-line --install --allow" in fresh.stdout
    upgrade = run_postinst(tmp_path / "up", WRAPALERT, "configure", "0.1.0")
    assert "hosts-deny-line" not in upgrade.stdout
    assert "sink smtp" in upgrade.stdout


def test_postinst_never_fails_on_what_check_config_says(tmp_path: Path) -> None:
    """A failing check-config (a broken config) does not fail the package's configuration."""
    result = run_postinst(tmp_path, "/bin/false", "configure", "")
    assert result.returncode == 0
