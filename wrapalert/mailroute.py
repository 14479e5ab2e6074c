"""Where mail to root really goes on this host, and how to make it reach a person.

Digests go to root by default. An MTA delivers that mail somewhere, and
"delivered" is not "read": Debian's exim4 hands root's mail, when
/etc/aliases names no one for root, to its `mail4root` router, which writes
it to /var/mail/mail, a mailbox nobody reads (`mail` as root says "No mail
for root"). Postfix does not deliver as root at all. The fix is the same for
both: `root: you` in /etc/aliases, then `newaliases`.

Pure: every path is under `root` (a tree in tests, `/` for real), and what
is read is parsed as text. Used by check-config, test-alert and the
package's postinst (`wrapalert check-config --mail`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIX = (
    "add 'root: you' to /etc/aliases (you: the login or address that should read it), "
    "then run newaliases"
)
_LOCAL_HOSTS = ("localhost", "localhost.localdomain", "127.0.0.1", "::1", "[127.0.0.1]", "[::1]")


@dataclass(frozen=True)
class Route:
    """Root's mail on this host: who delivers it, where it ends, and whether a person reads it."""

    mta: str | None  # "exim4", "postfix", another MTA's sendmail, or None (no MTA)
    where: str  # one sentence: where root's mail goes
    reaches_person: bool | None  # None: cannot tell
    fix: str | None = None
    mailbox: Path | None = None  # the file it ends in, where that is known


def to_root(recipients: Iterable[str], names: Iterable[str]) -> bool:
    """Whether any recipient is root on this host: bare `root`, or root@ one of `names`
    (this host's names) or a loopback name."""
    local = {n.lower() for n in (*names, *_LOCAL_HOSTS) if n}
    for recipient in recipients:
        user, at, domain = recipient.strip().rpartition("@")
        if not at:
            user, domain = domain, ""
        if user.lower() == "root" and (not domain or domain.lower() in local):
            return True
    return False


def local_names(root: Path, hostname: str) -> tuple[str, ...]:
    """This host's names as its MTA knows them: the configured one, /etc/mailname, /etc/hostname."""
    names = [hostname]
    for name in ("etc/mailname", "etc/hostname"):
        text = _read(root / name)
        if text and text.split():
            names.append(text.split()[0])
    return tuple(dict.fromkeys(names))


def is_local(host: str, names: Iterable[str]) -> bool:
    """Whether an SMTP sink's host is this host (so its MTA is the local one)."""
    return host.lower() in {*_LOCAL_HOSTS, *(n.lower() for n in names)}


def aliases(text: str) -> dict[str, list[str]]:
    """aliases(5): `name: target, target`; '#' comments; a line starting with a blank
    continues the previous one. Names are case-blind."""
    table: dict[str, list[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        if raw.startswith("#") or not raw.strip():
            current = None if not raw.strip() else current
            continue
        if raw[0] in " \t" and current is not None:
            table[current] += _targets(raw)
            continue
        name, colon, rest = raw.partition(":")
        if not colon:
            current = None
            continue
        current = name.strip().lower()
        table[current] = _targets(rest)
    return table


def _targets(text: str) -> list[str]:
    return [t.strip().strip('"') for t in text.split(",") if t.strip()]


def root_route(root: Path = Path("/")) -> Route:
    """Where this host's MTA puts mail for root."""
    redirect = _redirect(root)
    if (root / "usr/sbin/exim4").exists():
        return _exim(root, redirect)
    if (root / "usr/sbin/postfix").exists() or (root / "etc/postfix/main.cf").exists():
        return _postfix(redirect)
    sendmail = root / "usr/sbin/sendmail"
    if sendmail.exists() or sendmail.is_symlink():
        target = sendmail.resolve().name if sendmail.is_symlink() else "sendmail"
        where = f"delivered by {target} (/usr/sbin/sendmail), an MTA wrapalert does not know"
        if redirect:
            where += f"; {redirect}"
        return Route(
            target, where, None, None if redirect else f"make sure it reaches a person: {FIX}"
        )
    return Route(
        None,
        "no local MTA: nothing listens for it (no /usr/sbin/sendmail)",
        False,
        "install one (apt-get install exim4-daemon-light), then: "
        + FIX
        + "; or use a maildir sink, or an smtp sink to your mail server with your address",
    )


def _redirect(root: Path) -> str | None:
    """Where /etc/aliases or /root/.forward sends root's mail, as a phrase; None if nowhere."""
    targets = aliases(_read(root / "etc/aliases") or "").get("root", [])
    targets = [t for t in targets if t.lower().lstrip("\\") != "root"]
    if targets:
        return f"/etc/aliases sends it to {', '.join(targets)}"
    forward = (_read(root / "root/.forward") or "").strip()
    if forward:
        return f"/root/.forward sends it to {', '.join(_targets(forward.replace(chr(10), ',')))}"
    return None


def _exim(root: Path, redirect: str | None) -> Route:
    settings = _read(root / "etc/exim4/update-exim4.conf.conf") or ""
    kind = _setting(settings, "dc_eximconfig_configtype")
    if kind == "satellite":
        smarthost = _setting(settings, "dc_smarthost") or "its smarthost"
        return Route(
            "exim4",
            f"exim4 (satellite) sends it on to {smarthost}: make sure root reaches a person there",
            None,
        )
    if redirect:
        target = redirect.rpartition(" to ")[2]
        mailbox = (
            root / "var/mail" / target if re.fullmatch(r"[a-z_][a-z0-9_.-]*", target) else None
        )
        return Route("exim4", f"exim4 delivers it as {redirect}", True, mailbox=mailbox)
    file = _mail4root(root)
    return Route(
        "exim4",
        f"exim4 delivers it to {file} (Debian's mail4root router: /etc/aliases names no one "
        "for root), a mailbox nobody reads",
        False,
        FIX,
        mailbox=root / file.lstrip("/"),
    )


def _mail4root(root: Path) -> str:
    """The file the mail4root router writes to (Debian's: /var/mail/mail)."""
    for name in ("etc/exim4/conf.d/router/mmm_mail4root", "etc/exim4/exim4.conf.template"):
        text = _read(root / name) or ""
        block = text.partition("\nmail4root:")[2]
        found = re.search(r"^\s*data\s*=\s*(\S+)", block.partition("\n\n")[0], re.MULTILINE)
        if found:
            return found.group(1)
    return "/var/mail/mail"


def _postfix(redirect: str | None) -> Route:
    if redirect:
        return Route("postfix", f"postfix delivers it as {redirect}", True)
    return Route(
        "postfix",
        "postfix will not deliver as root (it uses default_privs, nobody) and /etc/aliases "
        "names no one for root: no person reads it",
        False,
        FIX,
    )


def _setting(text: str, name: str) -> str | None:
    found = re.search(rf"^{name}\s*=\s*['\"]?([^'\"\n]*)", text, re.MULTILINE)
    return found.group(1).strip() if found else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None
