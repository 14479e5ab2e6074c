"""The Debian package: built once with `make deb`, inspected with dpkg-deb and lintian, then
run from an extracted tree on Debian's own python3 and libraries (never installed on the host).

WRAPALERT_NSPAWN=1 adds a test that installs the .deb with apt into a debootstrapped trixie
and bookworm (WRAPALERT_NSPAWN_RELEASES) and boots each under systemd-nspawn (minutes,
network, root).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import mailbox
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import (
    EXPOSURE_MAX,
    EXPOSURE_MAX_NFTABLES,
    maildir_messages,
    receiver,
    require,
    wait_until,
    write_config,
)

from wrapalert import config, hostsdeny

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "packaging" / "debian" / "control"
SITE = "usr/lib/python3/dist-packages"
# The interpreter the package's scripts name, and what Debian 12 ships of each runtime
# dependency (PLATFORM.md): the package must run on exactly these.
SYSTEM_PYTHON = "/usr/bin/python3"
BOOKWORM = {
    "python3": "3.11.2",
    "python3-aiosmtplib": "2.0.0",
    "python3-jinja2": "3.1.2",
    "python3-structlog": "22.3.0",
}
PLAIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN = os.environ.get("WRAPALERT_NSPAWN") == "1"
# The releases the boot test installs the package into (space-separated).
NSPAWN_RELEASES = os.environ.get("WRAPALERT_NSPAWN_RELEASES", "trixie bookworm").split()


def run(
    argv: list[str],
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once for this module the way `make deb` builds it."""
    for tool, apt_package in (
        ("make", "make"),
        ("dpkg-buildpackage", "dpkg-dev"),
        ("dh", "debhelper"),
    ):
        require(shutil.which(tool) is not None, f"{tool} not found (apt-get install {apt_package})")
    unmet = run(["dpkg-checkbuilddeps", str(CONTROL)])
    require(unmet.returncode == 0, f"build dependencies missing: {unmet.stderr.strip()}")
    dist = tmp_path_factory.mktemp("dist")
    # lintian runs in its own test below, so that its findings are reported as such.
    built = run(["make", "-C", str(ROOT), "deb", f"DEB_DIST={dist}", "LINTIAN=true"], timeout=900)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    (built_deb,) = dist.glob("wrapalert_*_all.deb")
    return built_deb


@pytest.fixture(scope="module")
def contents(deb: Path) -> dict[str, str]:
    """`dpkg-deb -c`: each path (without the leading '.') -> its mode string, or '-> target'."""
    listing = run(["dpkg-deb", "-c", str(deb)])
    assert listing.returncode == 0, listing.stderr
    entries = {}
    for line in listing.stdout.splitlines():
        mode, _owner, _size, _date, _time, name = line.split(maxsplit=5)
        path, _, target = name.partition(" -> ")
        entries[path.removeprefix(".").rstrip("/") or "/"] = f"-> {target}" if target else mode
    return entries


@pytest.fixture(scope="module")
def control_files(deb: Path) -> dict[str, str]:
    """The control archive (`dpkg-deb --ctrl-tarfile`): member name -> text."""
    raw = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True, timeout=60
    ).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                out[member.name.removeprefix("./")] = extracted.read().decode()
    return out


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package unpacked into a throwaway root (`dpkg-deb -x`): no dpkg database touched."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=60)
    return root


@pytest.fixture(scope="module")
def installed(tree: Path) -> Path:
    """`tree`, once Debian's python3 can import the package's dependencies from apt."""
    require(Path(SYSTEM_PYTHON).exists(), f"{SYSTEM_PYTHON} not found (apt-get install python3)")
    probe = run([SYSTEM_PYTHON, "-I", "-c", "import aiosmtplib, jinja2, structlog"])
    require(
        probe.returncode == 0,
        "Debian's python3 lacks the runtime dependencies "
        "(apt-get install python3-aiosmtplib python3-jinja2 python3-structlog)",
    )
    return tree


def installed_env(root: Path) -> dict[str, str]:
    # PYTHONPATH stands in for the dist-packages directory dpkg would have written; nothing
    # else of ours (no venv, no checkout) is on the path. -I would ignore PYTHONPATH, so the
    # commands run with -s (no user site) instead.
    return {"PATH": PLAIN_PATH, "LC_ALL": "C.UTF-8", "PYTHONPATH": str(root / SITE)}


def installed_wrapalert(
    root: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The packaged /usr/bin/wrapalert, run as its shebang says, from the extracted tree."""
    return run(
        [SYSTEM_PYTHON, "-s", str(root / "usr/bin/wrapalert"), *args],
        timeout=timeout,
        env=installed_env(root),
        cwd=root,
    )


def parse_depends(field: str) -> dict[str, str | None]:
    """Depends: package -> its `>=` version (None when unversioned); each alternative of
    an unversioned `a | b` counts as a package."""
    out: dict[str, str | None] = {}
    for item in field.replace("|", ",").split(","):
        match = re.fullmatch(r"\s*([a-z0-9.+-]+)(?::any)?\s*(?:\(>=\s*([^)\s]+)\s*\))?\s*", item)
        assert match, f"unexpected Depends entry {item!r}"
        name, version = match.groups()
        out[name] = version or out.get(name)
    return out


def test_units_and_tmpfiles_are_the_checked_ones(contents: dict[str, str], tree: Path) -> None:
    """The systemd units go to /usr/lib/systemd/system and the spool's tmpfiles entry to
    /usr/lib/tmpfiles.d, byte for byte as packaging/ holds them; nothing goes to /lib
    (trixie's lintian: aliased-location; dpkg: "/lib/systemd/system not empty" at purge)."""
    shipped = {
        "/usr/lib/systemd/system/wrapalert.socket": ROOT / "packaging/systemd/wrapalert.socket",
        "/usr/lib/systemd/system/wrapalert.service": ROOT / "packaging/systemd/wrapalert.service",
        "/usr/lib/systemd/system/wrapalert-canary.service": ROOT
        / "packaging/systemd/wrapalert-canary.service",
        "/usr/lib/systemd/system/wrapalert-canary.timer": ROOT
        / "packaging/systemd/wrapalert-canary.timer",
        "/usr/lib/tmpfiles.d/wrapalert.conf": ROOT / "packaging/tmpfiles/wrapalert.conf",
    }
    for path, source in shipped.items():
        assert path in contents
        assert (tree / path.lstrip("/")).read_bytes() == source.read_bytes()
    assert [path for path in contents if path.split("/")[1] in ("lib", "bin", "sbin")] == []


def test_man_page_covers_both_commands(contents: dict[str, str]) -> None:
    """wrapalert(8) is installed compressed, and wrapalert-notify(8) points at it."""
    assert contents["/usr/share/man/man8/wrapalert.8.gz"].startswith("-")
    assert contents["/usr/share/man/man8/wrapalert-notify.8.gz"] == "-> wrapalert.8.gz"


def test_configuration_man_page_is_installed(contents: dict[str, str]) -> None:
    """wrapalert.toml(5), the configuration keys, is installed in section 5."""
    assert contents["/usr/share/man/man5/wrapalert.toml.5.gz"].startswith("-")


def test_commands_run_on_debians_python(contents: dict[str, str], tree: Path) -> None:
    """/usr/bin/wrapalert and /usr/bin/wrapalert-notify are executable scripts for
    /usr/bin/python3, not for the interpreter that built them."""
    for name in ("wrapalert", "wrapalert-notify"):
        assert contents[f"/usr/bin/{name}"].startswith("-rwxr-xr-x")
        first = (tree / "usr/bin" / name).read_text().splitlines()[0]
        # bookworm's dh-python writes "#!/usr/bin/python3", trixie's "#! /usr/bin/python3".
        assert first in (f"#!{SYSTEM_PYTHON}", f"#! {SYSTEM_PYTHON}")


def test_templates_and_client_ship_inside_the_package(contents: dict[str, str]) -> None:
    """The digest templates sit in the package's templates/ (where wrapalert/mail.py looks),
    next to notify.py, which the hosts.deny hook runs by path."""
    for template in sorted((ROOT / "templates").glob("*.j2")):
        assert f"/{SITE}/wrapalert/templates/{template.name}" in contents
    assert f"/{SITE}/wrapalert/notify.py" in contents


def test_configuration_is_a_conffile(control_files: dict[str, str], tree: Path) -> None:
    """/etc/wrapalert/wrapalert.toml and the logrotate rules are the package's conffiles,
    each packaging's file."""
    assert sorted(control_files["conffiles"].split()) == [
        "/etc/logrotate.d/wrapalert",
        "/etc/wrapalert/wrapalert.toml",
    ]
    shipped = tree / "etc/wrapalert/wrapalert.toml"
    assert shipped.read_bytes() == (ROOT / "packaging/wrapalert.toml").read_bytes()
    rotate = tree / "etc/logrotate.d/wrapalert"
    assert rotate.read_bytes() == (ROOT / "packaging/debian/wrapalert.logrotate").read_bytes()


def test_fleet_examples_ship_as_documentation(contents: dict[str, str]) -> None:
    """The Alertmanager configuration, its template, the Prometheus rules and the fleet's
    drop-in are installed as examples."""
    for name in (
        "alertmanager.yml",
        "wrapalert.tmpl",
        "wrapalert.rules.yml",
        "wrapalert-fleet.conf",
    ):
        assert f"/usr/share/doc/wrapalert/examples/{name}" in contents


def test_depends_carry_pyprojects_lower_bounds(deb: Path) -> None:
    """Each runtime dependency is in Depends with pyproject's lower bound, python3 >= 3.11."""
    field = run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    depends = parse_depends(field)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {"python3": project["requires-python"].removeprefix(">=")}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition(">=")
        expected[f"python3-{name.lower()}"] = version
    assert {name: depends.get(name) for name in expected} == expected


def test_depends_are_met_by_debian_12(deb: Path) -> None:
    """Every versioned Depends is satisfied by what Debian 12 ships."""
    depends = parse_depends(run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout)
    for name, version in depends.items():
        if version is None:
            continue
        assert name in BOOKWORM, f"{name} (>= {version}): which version does Debian 12 ship?"
        met = run(["dpkg", "--compare-versions", BOOKWORM[name], "ge", version])
        assert met.returncode == 0, f"Debian 12 has {name} {BOOKWORM[name]}, we need {version}"


def test_both_units_are_enabled_and_only_the_socket_started(
    control_files: dict[str, str],
) -> None:
    """postinst enables and starts wrapalert.socket, and enables the service (it starts at
    boot, so restored state does not wait) without starting it: the socket starts it on
    the first datagram. After an upgrade it is only restarted if it ran. The canary's
    timer is enabled and started, and like the socket not stopped for an upgrade."""
    postinst = control_files["postinst"]
    assert "deb-systemd-helper enable 'wrapalert.socket'" in postinst
    assert "deb-systemd-invoke start 'wrapalert.socket'" in postinst
    assert "deb-systemd-helper enable 'wrapalert.service'" in postinst
    assert not re.search(r"deb-systemd-invoke (start|restart) [^\n]*wrapalert\.service", postinst)
    assert "deb-systemd-invoke try-restart 'wrapalert.service'" in postinst
    # The canary's timer: enabled and started; its service only ever by the timer.
    assert "deb-systemd-helper enable 'wrapalert-canary.timer'" in postinst
    assert "deb-systemd-invoke start 'wrapalert-canary.timer'" in postinst
    assert "wrapalert-canary.service'" not in postinst
    # Nothing is stopped before an upgrade: clients keep a socket to write to, and the
    # timer keeps its schedule.
    assert "deb-systemd-invoke stop" not in control_files.get("preinst", "")


def test_removal_stops_the_socket(control_files: dict[str, str]) -> None:
    """prerm stops the socket (and with it the service) on remove."""
    assert "deb-systemd-invoke stop 'wrapalert.socket'" in control_files["prerm"]


# Builds a root for the package's maintainer scripts in a private mount and network
# namespace: /usr is the extracted package over the host's (a read-only overlay), /bin,
# /lib... as on the host, /etc and /var our own, nft tables in a network namespace of
# their own. Runs the script lines given on stdin in that root, then lists the tables.
SANDBOX = r"""
set -e
root=$1 tree=$2
mount -t overlay overlay -o "lowerdir=$tree/usr:/usr" "$root/usr"
for dir in bin sbin lib lib32 lib64 libx32; do
    if [ -d "/$dir" ] && [ ! -L "/$dir" ]; then
        mkdir -p "$root/$dir"
        mount --bind "/$dir" "$root/$dir"
    fi
done
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
for table in wrapalert from_config other_tool; do nft add table inet "$table"; done
chroot "$root" /bin/sh -s
echo "tables: $(nft list tables | tr '\n' ' ')"
"""


@dataclass
class Sandbox:
    """A root for the package's maintainer scripts (see SANDBOX)."""

    root: Path
    tree: Path
    scripts: dict[str, str]

    def run(self, lines: str) -> subprocess.CompletedProcess[str]:
        for name, text in self.scripts.items():
            (self.root / name).write_text(text)
        return subprocess.run(
            ["unshare", "--mount", "--net", "--propagation", "private",
             "sh", "-c", SANDBOX, "sh", str(self.root), str(self.tree)],
            input=lines, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip


def own_part(script: str) -> str:
    """A maintainer script up to debhelper's first section: the package's own lines (the
    rest stops units and cleans dpkg's records, which a sandbox has not got)."""
    return script.split("# Automatically added by", 1)[0]


@pytest.fixture
def sandbox(installed: Path, control_files: dict[str, str], tmp_path: Path) -> Sandbox:
    """A root with the package's /usr, an empty /var, an /etc with its configuration."""
    require(os.geteuid() == 0, "mount and network namespaces need root")
    require(shutil.which("nft") is not None, "nft not found (apt-get install nftables)")
    root = tmp_path / "root"
    for name in ("usr", "dev", "proc", "tmp", "etc/wrapalert", "var/lib/wrapalert"):
        (root / name).mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():  # merged /usr: the same link
            (root / name).symlink_to(host.readlink())
    (root / "var/spool/wrapalert").mkdir(parents=True)
    (root / "etc/hosts.deny").write_text("# nothing of wrapalert's\n")
    scripts = {name: own_part(control_files[name]) for name in ("prerm", "postrm")}
    return Sandbox(root, installed, scripts)


def test_purge_deletes_the_nft_tables_the_configuration_named(sandbox: Sandbox) -> None:
    """On remove, prerm notes the nftables sink's table (postrm purge no longer has the
    conffile); purge deletes it and the default table wrapalert, says so, leaves other
    tables alone, and passes nft no name the configuration could not have held."""
    (sandbox.root / "etc/wrapalert/wrapalert.toml").write_text(
        '[[sink]]\ntype = "smtp"\n\n[[sink]]\ntype = "nftables"\ntable = "from_config"\n'
    )
    result = sandbox.run(
        "set -e\n"
        "sh /prerm remove\n"
        "sh /postrm remove\n"
        "echo 'x; touch /injected' >> /var/lib/wrapalert/nft-tables\n"
        "rm /etc/wrapalert/wrapalert.toml\n"  # dpkg removes conffiles before postrm purge
        "sh /postrm purge\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wrapalert: deleted the nftables table inet from_config (its bans)",
        "wrapalert: deleted the nftables table inet wrapalert (its bans)",
        "tables: table inet other_tool ",
    ], result.stderr
    assert not (sandbox.root / "injected").exists()
    assert not (sandbox.root / "var/lib/wrapalert").exists()
    assert not (sandbox.root / "var/spool/wrapalert").exists()


def test_purge_without_nft_or_its_tables_says_nothing(sandbox: Sandbox) -> None:
    """Purge with no table of wrapalert's (and no note from prerm) deletes nothing and
    succeeds quietly."""
    result = sandbox.run("nft delete table inet wrapalert\nsh /postrm purge\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "tables: table inet from_config table inet other_tool \n"


def test_removal_names_the_hosts_deny_line_left_behind(sandbox: Sandbox) -> None:
    """On remove, a wrapalert line still in /etc/hosts.deny is named, with the command that
    takes it out; a commented-out one, or a host merely named wrapalert, is not one."""
    (sandbox.root / "etc/hosts.deny").write_text(
        "# ALL : ALL : spawn wrapalert, see README\nsshd: wrapalert.example.org\n"
        "ALL : ALL : SPAWN (/usr/bin/python3 -I -S /usr/lib/python3/dist-packages/wrapalert/"
        "notify.py d=%d a=%a) &\n"
    )
    result = sandbox.run("sh /postrm remove\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "wrapalert: /etc/hosts.deny line 3 still hands refused connections to wrapalert, "
        "which is no longer installed: delete it (`wrapalert hosts-deny-line --uninstall` "
        "does that while wrapalert is installed).\n"
    )
    quiet = sandbox.run("sed -i 3d /etc/hosts.deny\nsh /postrm remove\n")
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_postinst_makes_the_user_before_the_spool(
    control_files: dict[str, str], contents: dict[str, str]
) -> None:
    """The package ships its sysusers.d entry, and postinst makes the wrapalert user
    before tmpfiles gives it the spool (a missing user would fail that line)."""
    assert "/usr/lib/sysusers.d/wrapalert.conf" in contents
    postinst = control_files["postinst"]
    assert "systemd-sysusers" in postinst
    assert postinst.index("systemd-sysusers") < postinst.index("--create wrapalert.conf")


def test_postinst_creates_the_spool(control_files: dict[str, str]) -> None:
    """postinst applies the tmpfiles entry, so the spool exists before the first boot."""
    assert "systemd-tmpfiles" in control_files["postinst"]
    assert "--create wrapalert.conf" in control_files["postinst"]


def test_lintian_reports_no_errors_or_warnings(deb: Path) -> None:
    """lintian finds no errors, and no warnings: each one kept is overridden with a reason."""
    require(shutil.which("lintian") is not None, "lintian not found (apt-get install lintian)")
    result = run(["lintian", "--fail-on", "none", str(deb)], timeout=300)
    assert result.returncode == 0, result.stderr
    findings = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert findings == []


def test_shipped_config_comments_show_the_defaults() -> None:
    """The conffile sets nothing, and its commented settings, uncommented, are the built-in
    defaults: what it shows is what runs."""
    text = (ROOT / "packaging/wrapalert.toml").read_text()
    uncommented = re.sub(r"(?m)^#(?=[a-z\[])", "", text)
    defaults = replace(config.Config(), source="")
    assert replace(config.loads(text), source="") == defaults
    assert replace(config.loads(uncommented), source="") == defaults
    assert uncommented != text


def test_installed_wrapalert_runs_from_the_package(installed: Path) -> None:
    """The extracted /usr/bin/wrapalert runs on Debian's python3 with apt's libraries and
    imports wrapalert from the package, not from this checkout."""
    assert installed_wrapalert(installed, "--help").returncode == 0
    probe = run(
        [
            SYSTEM_PYTHON,
            "-s",
            "-c",
            "import wrapalert.cli, wrapalert.mail; print(wrapalert.__file__)",
        ],
        env=installed_env(installed),
        cwd=installed,
    )
    assert probe.stdout.strip() == str(installed / SITE / "wrapalert/__init__.py"), probe.stderr


def test_installed_check_config_accepts_the_conffile(installed: Path) -> None:
    """`wrapalert check-config -c` passes the shipped /etc/wrapalert/wrapalert.toml."""
    conffile = installed / "etc/wrapalert/wrapalert.toml"
    result = installed_wrapalert(installed, "check-config", "-c", str(conffile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {conffile}")
    assert "sink smtp: smtp localhost:25 tls=none to root" in result.stdout


def test_installed_hosts_deny_line_names_the_packaged_client(installed: Path) -> None:
    """hosts-deny-line names /usr/bin/python3 and the packaged notify.py (below the extracted
    root here; /usr/lib/python3/dist-packages once dpkg installs it)."""
    conffile = installed / "etc/wrapalert/wrapalert.toml"
    result = installed_wrapalert(installed, "hosts-deny-line", "-c", str(conffile))
    assert result.returncode == 0, result.stderr
    client = hostsdeny.escape(str(installed / SITE / "wrapalert/notify.py"))
    fields = "d=%d p=%p c=%c a=%a n=%n s=%s A=%A r=%r R=%R i=$$"
    assert result.stdout == (
        "ALL : ALL : spawn (/usr/bin/timeout 0.1 /usr/bin/logger --socket-errors=on -d "
        f"-u /run/wrapalert/notify.sock -t wrapalert -p authpriv.notice -- WA1 {fields} || "
        f"{SYSTEM_PYTHON} -I -S {client} {fields} wait=0) &\n"
    )


@pytest.mark.parametrize("how", ["hook", "wrapalert-notify"])
def test_installed_client_sends_one_datagram(installed: Path, sockdir: Path, how: str) -> None:
    """The packaged client, run as the hook line runs it (-I -S notify.py) or as
    /usr/bin/wrapalert-notify, sends the event to the socket."""
    if how == "hook":
        argv = [SYSTEM_PYTHON, "-I", "-S", str(installed / SITE / "wrapalert/notify.py")]
    else:
        argv = [SYSTEM_PYTHON, "-s", str(installed / "usr/bin/wrapalert-notify")]
    with receiver(sockdir / "notify.sock") as sock:
        sock.settimeout(10)
        args = ["d=sshd", "a=192.0.2.1", f"socket={sockdir}/notify.sock", f"spool={sockdir}"]
        result = run([*argv, *args], env=installed_env(installed))
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "WA1"
    assert {"d=sshd", "a=192.0.2.1"} <= set(lines)


@pytest.fixture
def installed_daemon(installed: Path, sockdir: Path) -> Iterator[Path]:
    """The packaged `wrapalert run`, on a Maildir config under `sockdir`, ready (sd_notify)."""
    conf = write_config(sockdir)
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(sockdir / "systemd.sock"))
    ready.settimeout(30)
    env = installed_env(installed) | {"NOTIFY_SOCKET": str(sockdir / "systemd.sock")}
    with (sockdir / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-s", str(installed / "usr/bin/wrapalert"), "run", "-c", str(conf)],
            env=env,
            cwd=installed,
            stdin=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        try:
            while "READY=1" not in ready.recv(4096).decode():
                pass
        except TimeoutError:
            pytest.fail(
                "no READY=1 from the packaged daemon:\n" + (sockdir / "daemon.log").read_text()
            )
        yield conf
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        ready.close()


def test_installed_daemon_delivers_a_digest(
    installed: Path, sockdir: Path, installed_daemon: Path
) -> None:
    """The packaged daemon, on Debian's python3, aiosmtplib, jinja2 and structlog, turns an
    event from the packaged client into a digest rendered from the packaged templates."""
    client = [SYSTEM_PYTHON, "-I", "-S", str(installed / SITE / "wrapalert/notify.py")]
    sent = run([*client, "d=sshd", "a=203.0.113.9", f"socket={sockdir}/notify.sock"])
    assert sent.returncode == 0
    wait_until(lambda: bool(maildir_messages(sockdir / "Maildir")), what="the digest")
    (msg,) = maildir_messages(sockdir / "Maildir")
    assert msg["X-Wrapalert-Events"] == "1"
    text = msg.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "203.0.113.9" in content
    assert "template failed" not in content  # the built-in fallback when templates are missing
    status = installed_wrapalert(installed, "status", "--json", "-c", str(installed_daemon))
    assert json.loads(status.stdout)["received"] == 1, status.stderr


CHECK_SCRIPT = """\
#!/bin/sh
# Runs once the container has booted; the test reads what it writes to /wa-result.
exec > /wa-result/log 2>&1
set -x
systemctl is-system-running --wait
systemctl is-enabled wrapalert.socket wrapalert.service > /wa-result/enabled
systemctl is-active wrapalert.socket wrapalert.service > /wa-result/before
stat -c '%a %n' /run/wrapalert/notify.sock /var/spool/wrapalert > /wa-result/modes
stat -c '%a %U %G %n' /var/spool/wrapalert /var/spool/wrapalert/0 /var/lib/wrapalert \\
    /run/wrapalert/control.sock > /wa-result/owners
# Who the daemon runs as, and with which capabilities.
id -u wrapalert > /wa-result/uid
grep -E '^(Uid|Gid|CapPrm|CapEff|CapBnd|CapAmb):' \\
    /proc/$(systemctl show -P MainPID wrapalert.service)/status > /wa-result/proc
cat /proc/$(systemctl show -P MainPID wrapalert.service)/uid_map > /wa-result/uid_map
# The daemon down (and the socket with it): root's and nobody's clients spool.
systemctl stop wrapalert.socket wrapalert.service
wrapalert-notify d=sshd a=198.51.100.1
setpriv --reuid=nobody --regid=nogroup --clear-groups wrapalert-notify d=in.ftpd a=198.51.100.2
find /var/spool/wrapalert -name '*.wa1' -printf '%m %u %g %h\\n' | sort > /wa-result/spooled
systemctl start wrapalert.socket wrapalert.service
for i in $(seq 150); do
    wrapalert status --json > /wa-result/ingested.json && grep -q '"spooled": 2' \\
        /wa-result/ingested.json && break
    sleep 0.2
done
find /var/spool/wrapalert -name '*.wa1' > /wa-result/left
# A regular user's report: in the daemon's user namespace that user reads as 65534.
useradd --no-create-home --uid 1000 wa-user
setpriv --reuid=wa-user --regid=wa-user --clear-groups wrapalert-notify d=vsftpd a=198.51.100.3
# Two daemons' refusals from two addresses, through the real libwrap and the hook line.
wrapalert simulate --count 1 --daemons sshd,in.ftpd --from 203.0.113.7,2001:db8::66
for i in $(seq 450); do
    wrapalert status --json > /wa-result/status.json && grep -q '"received": 7,' \\
        /wa-result/status.json && grep -q '"delivered": [1-9]' /wa-result/status.json && break
    sleep 0.2
done
# The first hour, as README's "Installing: the first hour" says, from an SSH session: the
# admin at 127.0.0.5, someone elsewhere at 127.0.0.9 (every 127/8 address is this host's).
useradd --create-home alice
echo 'root: alice' >> /etc/aliases
newaliases
mkdir -p -m 700 /root/.ssh
ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys
systemctl start ssh.service
ssh_from() {
    from=$1; shift
    ssh -b "$from" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 root@127.0.0.1 "$@"
}
ssh_from 127.0.0.5 true; echo "before $?" > /wa-result/ssh
# Without an allow entry for the admin, --install refuses (exit 2) and says what to add.
ssh_from 127.0.0.5 wrapalert hosts-deny-line --install > /wa-result/install-refused 2>&1
echo "refused $?" >> /wa-result/ssh
ssh_from 127.0.0.5 wrapalert hosts-deny-line --install --allow 127.0.0.5 \
    > /wa-result/install 2>&1
echo "installed $?" >> /wa-result/ssh
ssh_from 127.0.0.5 true; echo "admin $?" >> /wa-result/ssh
date +%s > /wa-result/refused-at
ssh_from 127.0.0.9 true; echo "elsewhere $?" >> /wa-result/ssh
# Until a digest naming the refused client is in alice's mailbox (an earlier group's
# digest may come first), then when it came. (Never create the mailbox: exim, delivering
# as alice, could not write to one root made.)
python3 - <<'EOF'
import email, email.policy, mailbox, os, time
deadline = time.time() + 120
while time.time() < deadline:
    box = mailbox.mbox("/var/mail/alice", create=False) if os.path.exists("/var/mail/alice") else ()
    for message in box:
        parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        plain = parsed.get_body(("plain",))
        if plain is not None and "127.0.0.9" in plain.get_content():
            deadline = 0
    time.sleep(0.2)
EOF
date +%s > /wa-result/mailed-at
wrapalert status --json > /wa-result/first-hour.json
# The daily canary as its timer runs it: the packaged, hardened unit, through the line just
# installed; the daemon counts its refusal apart (never in a digest).
systemctl start wrapalert-canary.service; echo "$?" > /wa-result/canary
systemctl is-enabled wrapalert-canary.timer >> /wa-result/canary
journalctl -b --no-pager -u wrapalert-canary.service > /wa-result/canary-journal
wrapalert status --json > /wa-result/canary-status.json
journalctl -b --no-pager -u ssh.service > /wa-result/ssh-journal
cp /var/mail/alice /wa-result/alice || true
cp /etc/hosts.allow /etc/hosts.deny /wa-result/
# Trusting a uid the daemon's namespace hides: the reload is refused, the service runs on.
sed -i 's/^\\[daemon\\]$/[daemon]\\ntrusted_uids = [0, 1000]/' /etc/wrapalert/wrapalert.toml
systemctl reload wrapalert.service
sleep 1
systemctl is-active wrapalert.socket wrapalert.service > /wa-result/after
cp /var/mail/mail /wa-result/mailbox
# The service's exposure as the real systemd rates it, plain and with the nftables
# drop-in (loaded, not started: nftables is not installed here).
systemd-analyze security --no-pager wrapalert.service > /wa-result/security
mkdir -p /etc/systemd/system/wrapalert.service.d
cp /usr/share/doc/wrapalert/examples/wrapalert-nftables.conf \\
    /etc/systemd/system/wrapalert.service.d/nftables.conf
systemctl daemon-reload
systemd-analyze security --no-pager wrapalert.service > /wa-result/security-nftables
journalctl -b --no-pager -u wrapalert.socket -u wrapalert.service > /wa-result/journal
# Removal and purge, with the hook line in hosts.deny and nft tables of the default name,
# of a configured one and of another tool (the container has its own network namespace).
printf '\n[[sink]]\ntype = "smtp"\n\n[[sink]]\ntype = "nftables"\ntable = "wa_custom"\n' \
    >> /etc/wrapalert/wrapalert.toml
for table in wrapalert wa_custom other_tool; do nft add table inet $table; done
# (The hook line is in hosts.deny since the first hour's --install.)
apt-get purge -y -q wrapalert > /wa-result/purge 2>&1
nft list tables > /wa-result/tables
ls -d /usr/lib/systemd/system/wrapalert.* /var/lib/wrapalert /var/spool/wrapalert \
    /etc/wrapalert/wrapalert.toml > /wa-result/purged-left 2>/dev/null || true
systemctl poweroff
"""
CHECK_UNIT = """\
[Unit]
Description=wrapalert package check

[Service]
Type=exec
ExecStart=/usr/local/sbin/wa-check

[Install]
WantedBy=multi-user.target
"""


def exposure(report: str) -> float:
    """The overall exposure level in a `systemd-analyze security` report."""
    match = re.search(r"Overall exposure level for wrapalert.service: ([0-9.]+)", report)
    assert match, report
    return float(match.group(1))


def nspawn(tree: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # --register=no --keep-unit: no machined or host systemd needed (PLATFORM.md).
    argv = ["systemd-nspawn", "-q", "-D", str(tree), "--register=no", "--keep-unit", *args]
    return run(argv, timeout=timeout)


def assert_least_privilege(result: Callable[[str], str], context: str) -> None:
    """What the boot test saw of the running daemon: its uids, capabilities, user namespace."""
    # The daemon: user wrapalert, real, effective, saved and file system uid; no
    # capability in any set.
    uid = result("uid").strip()
    proc = dict(line.split(":", 1) for line in result("proc").splitlines())
    assert proc["Uid"].split() == [uid] * 4, context
    for capabilities in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(proc[capabilities], 16) == 0, (capabilities, proc)
    # In a user namespace of its own (PrivateUsers=yes) that maps root and wrapalert
    # only: every other user's credentials and files read as 65534 there.
    assert [line.split() for line in result("uid_map").splitlines()] == [
        ["0", "0", "1"],
        [uid, uid, "1"],
    ], context


def assert_first_hour(
    results: Path, result: Callable[[str], str], installed: str, context: str
) -> None:
    """What the boot test saw of README's first hour, followed from an SSH session: the
    package's note on root's mail, --install refusing to lock the admin out and then
    installing with the admin's entry, the admin still let in, a client elsewhere refused,
    and that refusal's digest in the mailbox of the person /etc/aliases names, within a
    minute; then the packaged canary unit, as its timer starts it, proves the line."""
    assert "/var/mail/mail" in installed, installed[-3000:]  # postinst: where root's mail goes
    assert "hosts-deny-line --install --allow" in installed, installed[-3000:]
    ssh = dict(line.split() for line in result("ssh").splitlines())
    assert ssh == {
        "before": "0", "refused": "2", "installed": "0", "admin": "0", "elsewhere": "255",
    }, (ssh, result("install-refused"), result("install"), context)  # fmt: skip
    assert "sshd : 127.0.0.5" in result("install-refused"), result("install-refused")
    assert "sshd : 127.0.0.5" in result("hosts.allow")
    assert "spawn" in result("hosts.deny")
    bodies = []
    for message in mailbox.mbox(results / "alice"):
        digest = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        assert isinstance(digest, EmailMessage)
        plain = digest.get_body(("plain",))
        assert plain is not None, digest
        bodies.append(plain.get_content())
    assert any("127.0.0.9" in body for body in bodies), (bodies, context)
    assert not any("127.0.0.5" in body for body in bodies), bodies  # the admin's ssh passed
    waited = int(result("mailed-at")) - int(result("refused-at"))
    assert waited <= 60, waited
    # The packaged canary unit (root, one capability, no network) passed through the line.
    assert result("canary").split() == ["0", "enabled"], result("canary-journal")
    hook = json.loads(result("canary-status.json") or "{}").get("hook", {})
    assert hook.get("ok") is True, hook  # the line installed: the alarm is on again
    canary = hook.get("canary", {})
    assert canary.get("ok") is True, (canary, result("canary-journal"))
    assert canary.get("events", 0) >= 1, canary


def assert_purged(result: Callable[[str], str]) -> None:
    """What the boot test saw of `apt-get purge wrapalert`: the default and the configured
    nft table deleted, another tool's kept; the hosts.deny line named once; units, state,
    spool and conffile gone; and no dpkg warning (units in /lib/systemd/system gave
    "directory '/lib/systemd/system' not empty so not removed")."""
    purge = result("purge")
    assert "deleted the nftables table inet wa_custom" in purge, purge
    assert "deleted the nftables table inet wrapalert" in purge, purge
    assert result("tables").split() == ["table", "inet", "other_tool"], purge
    assert purge.count("still hands refused connections to wrapalert") == 1, purge
    assert "warning" not in purge.lower(), purge
    assert result("purged-left") == "", purge


def assert_root_mail(results: Path, context: str) -> None:
    """Root's mailbox (mail4root's /var/mail/mail) holds a digest counting refusals and,
    booted before any hook line was installed, an alarm-off notice naming hosts.deny in
    a mail of its own."""
    mails = list(mailbox.mbox(results / "mailbox"))
    digests = [m for m in mails if m["X-Wrapalert-Notice"] is None]
    assert digests, context
    assert int(digests[0]["X-Wrapalert-Events"]) >= 1
    subjects = [str(m["Subject"]) for m in mails]
    notices = [str(m["Subject"]) for m in mails if m["X-Wrapalert-Notice"] == "alarm-off"]
    assert any("ALARM OFF: /etc/hosts.deny" in subject for subject in notices), subjects


@pytest.mark.skipif(not NSPAWN, reason="opt-in: WRAPALERT_NSPAWN=1 (debootstrap, minutes)")
@pytest.mark.parametrize("release", NSPAWN_RELEASES)
def test_boots_under_systemd(deb: Path, tmp_path: Path, release: str) -> None:
    """Installed with apt into a debootstrapped release and booted under systemd-nspawn:
    the socket is enabled and listening, the service runs as user wrapalert without
    capabilities in a user namespace of its own (a reload trusting a uid it hides is
    refused), ingests what root's and nobody's clients spooled while it was down, counts
    every refusal the real libwrap hands to the hook, mails a digest through the local
    MTA, and systemd-analyze security rates it as README says. Purged, it deletes its
    nft tables, names the hosts.deny line left behind, and leaves nothing, without a word
    from dpkg."""
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container")):
        require(shutil.which(tool) is not None, f"{tool} not found (apt-get install {package})")
    require(os.geteuid() == 0, "debootstrap and systemd-nspawn need root")
    tree, results = tmp_path / release, tmp_path / "results"
    results.mkdir()
    mirror = os.environ.get("WRAPALERT_NSPAWN_MIRROR", "http://deb.debian.org/debian")
    try:
        bootstrap = run(
            ["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus",
             release, str(tree), mirror],
            timeout=1200,
        )  # fmt: skip
        assert bootstrap.returncode == 0, bootstrap.stdout[-3000:] + bootstrap.stderr[-3000:]
        shutil.copy(deb, tree / "root" / deb.name)
        # apt, not dpkg -i: Depends and Recommends (libwrap0, the default MTA) resolve as
        # they will for users. nftables: the tables purge deletes.
        setup = nspawn(
            tree,
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "sh",
            "-c",
            f"apt-get update -q && apt-get install -y -q /root/{deb.name} nftables openssh-server",
            timeout=1200,
        )
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        script = tree / "usr/local/sbin/wa-check"
        script.write_text(CHECK_SCRIPT)
        script.chmod(0o755)
        (tree / "etc/systemd/system/wa-check.service").write_text(CHECK_UNIT)
        (tree / "etc/systemd/system/multi-user.target.wants/wa-check.service").symlink_to(
            "/etc/systemd/system/wa-check.service"
        )
        # A network namespace of its own: the nft tables made inside are not the host's.
        booted = nspawn(
            tree, "-b", "--private-network", f"--bind={results}:/wa-result", timeout=600
        )

        def result(name: str) -> str:
            path = results / name
            return path.read_text() if path.exists() else ""

        context = f"{booted.stdout[-2000:]}\n{result('log')[-3000:]}\n{result('journal')[-3000:]}"
        assert result("enabled").split() == ["enabled", "enabled"], context
        assert result("before").split() == ["active", "active"], context  # started at boot
        assert result("modes").split() == [
            "666", "/run/wrapalert/notify.sock", "3777", "/var/spool/wrapalert",
        ]  # fmt: skip
        assert result("owners").splitlines() == [
            "3777 wrapalert wrapalert /var/spool/wrapalert",
            "2770 root wrapalert /var/spool/wrapalert/0",
            "755 wrapalert wrapalert /var/lib/wrapalert",
            "600 wrapalert wrapalert /run/wrapalert/control.sock",
        ], context
        assert_least_privilege(result, context)
        # Spooled while the daemon was down: root's in its own dir, nobody's in the shared
        # one, both 0640 in group wrapalert; both ingested once it started, none left.
        assert result("spooled").splitlines() == [
            "640 nobody wrapalert /var/spool/wrapalert",
            "640 root wrapalert /var/spool/wrapalert/0",
        ], context
        ingested = json.loads(result("ingested.json") or "{}")
        assert (ingested.get("spooled"), ingested.get("untrusted")) == (2, 1), context
        assert result("left") == "", context
        assert "spool_private_unavailable" not in result("journal"), context
        status = json.loads(result("status.json") or "{}")
        assert (status.get("received"), status.get("rejected")) == (7, {}), context
        assert status.get("untrusted") == 2, context  # nobody's spooled report, wa-user's
        # A reload trusting uid 1000, which the namespace hides: refused, named, kept.
        assert "reload_refused" in result("journal"), context
        assert "trusted_uids [1000]: " in result("journal"), context
        assert status["sinks"]["smtp"]["delivered"] >= 1, context
        # systemd-analyze security in the booted system: what README reports.
        plain, nftables = exposure(result("security")), exposure(result("security-nftables"))
        assert plain <= EXPOSURE_MAX, result("security")
        assert nftables <= EXPOSURE_MAX_NFTABLES, result("security-nftables")
        assert result("after").split() == ["active", "active"], context
        assert_root_mail(results, context)
        assert_first_hour(results, result, setup.stdout, context)
        assert_purged(result)
    finally:
        shutil.rmtree(tree, ignore_errors=True)  # about 400 MB


def test_nftables_drop_in_ships_as_an_example(
    contents: dict[str, str], control_files: dict[str, str]
) -> None:
    """The nftables sink's systemd drop-in is in the package's examples, and nftables is
    suggested (the sink is optional; a suggestion installs nothing by default)."""
    assert "/usr/share/doc/wrapalert/examples/wrapalert-nftables.conf" in contents
    assert "Suggests: nftables" in control_files["control"]
