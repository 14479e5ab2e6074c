"""Issue 15, tried as local attackers would: uid 65534 and a second ordinary uid, through
setpriv, against the running daemon (or while it is down). Each test reproduces one break.

Root is needed to run as other uids; the daemon's trusted uid is root's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    PYTHON,
    WRAPALERT,
    Deliveries,
    Running,
    client,
    make_config,
    require,
    wait_until,
    write_config,
)

from wrapalert import config, notify
from wrapalert.daemon import spool as spool_mod
from wrapalert.daemon.server import Server
from wrapalert.sinks.jsonl import JsonlSinkConfig
from wrapalert.sinks.maildir import MaildirSinkConfig
from wrapalert.wire import encode

pytestmark = pytest.mark.system

NOBODY = 65534
OTHER = 4242  # a second ordinary uid, with no account: setpriv needs none
YEAR_2100 = 4102444800

# Makes N empty files in DIR named PREFIX0.. and dates them in the year 2100.
FILL = """
import os, sys
d, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    p = os.path.join(d, prefix + str(i))
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.utime(p, (4102444800, 4102444800))
"""
# Writes a WA1 payload into a file the attacker may write, then hard-links it into the spool.
LINK = """
import os, sys
victim, target = sys.argv[1], sys.argv[2]
with open(victim, "wb") as f:
    f.write(b"WA1\\nd=sshd\\na=203.0.113.66\\n")
os.link(victim, target)
"""
# Sends N datagrams with an attacker-chosen daemon name (a blocking socket waits out a full queue).
FLOOD = """
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b"WA1\\nd=CRITICAL:root-compromise\\na=192.0.2.%d\\n" % (i % 250), path)
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    require(os.geteuid() == 0, "running as other uids needs root (setpriv)")


def as_user(uid: int, code: str, *args: str) -> None:
    """Run Python `code` as `uid` (no groups, no privileges), like a local attacker."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    argv += [PYTHON, "-I", "-S", "-c", code, *args]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=120)


def shared_spool(cfg: config.Config) -> Path:
    """The spool dir as the package makes it: sticky and world-writable."""
    spool = cfg.daemon.spool_dir
    spool.mkdir(exist_ok=True)
    spool.chmod(0o1777)
    return spool


def start_and_stop(server: Server, *, wait: float = 0.0) -> Server:
    async def scenario() -> None:
        async with Running(server):
            await asyncio.sleep(wait)

    asyncio.run(scenario())
    return server


# --- break 1: filling the spool -------------------------------------------------------


def test_a_local_user_cannot_fill_a_trusted_uids_spool(sockdir: Path) -> None:
    """With the daemon down and the shared spool filled by uid 65534 with SPOOL_CAP dot
    files dated 2100, root's event is still spooled (in root's own dir) and reported once
    the daemon starts, and the junk is removed and counted."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    start_and_stop(Server(cfg))  # an earlier run made root's own spool dir
    as_user(NOBODY, FILL, str(spool), str(notify.SPOOL_CAP), ".x")

    client("d=sshd", "a=192.0.2.1", f"socket={cfg.daemon.socket}", f"spool={spool}")
    own = spool / str(os.geteuid())
    assert len(list(own.iterdir())) == 1  # spooled, not pushed to syslog

    async def scenario() -> Server:
        seen = Deliveries()
        server = Server(cfg, on_delivery=seen)
        async with Running(server):
            await seen.wait_events(1)
        return server

    server = asyncio.run(scenario())
    assert (server.stats.received, server.stats.untrusted) == (1, 0)
    assert server.stats.rejected["stale_spool_file"] == notify.SPOOL_CAP
    assert sorted(p.name for p in spool.iterdir()) == [own.name]


def test_a_squatter_on_a_trusted_uids_spool_name_is_removed(sockdir: Path) -> None:
    """A directory uid 65534 made at `spool/0` before the daemon's first start is removed
    and counted; the daemon's own, root's and the spool's group's, 2770, takes its place."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    squat = spool / str(os.geteuid())
    as_user(NOBODY, "import os, sys; os.mkdir(sys.argv[1], 0o777)", str(squat))
    as_user(NOBODY, FILL, str(squat), "3", "x")

    server = start_and_stop(Server(cfg))
    st = squat.lstat()
    assert (stat.S_ISDIR(st.st_mode), st.st_uid, stat.S_IMODE(st.st_mode)) == (True, 0, 0o2770)
    assert st.st_gid == spool.stat().st_gid
    assert server.stats.rejected["spool_squatter"] == 1


def test_a_squatter_that_cannot_be_removed_is_counted_and_logged_once(sockdir: Path) -> None:
    """A squatter on root's spool name that even root cannot remove (here a mount point,
    in the daemon's own mount namespace) is counted and logged once, not on every pass,
    and the daemon says once that root's clients use the shared spool."""
    require(os.geteuid() == 0, "the squatter is made as another uid and mounted over")
    unshare = shutil.which("unshare") or ""
    require(bool(unshare), "unshare is missing (apt-get install util-linux)")
    path = write_config(sockdir)  # trusts this uid (0), passes every 200 ms
    spool = sockdir / "spool"
    spool.mkdir()
    spool.chmod(0o1777)
    squat = spool / "0"
    as_user(NOBODY, "import os, sys; os.mkdir(sys.argv[1], 0o777)", str(squat))
    script = 'mount -t tmpfs -o uid=65534,mode=0777 none "$1" && shift && exec "$@"'
    argv = [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh", str(squat)]
    with (sockdir / "daemon.log").open("w") as out:
        proc = subprocess.Popen([*argv, WRAPALERT, "run", "-c", str(path)], stdout=out, stderr=out)
    try:
        wait_until((sockdir / "control.sock").exists, 20, "the daemon's control socket")
        time.sleep(1.5)  # about seven passes
        answer = subprocess.run(
            [WRAPALERT, "status", "--json", "-c", str(path)],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (sockdir / "daemon.log").read_text()
    assert json.loads(answer.stdout)["rejected"] == {"spool_squatter": 1}, log
    assert log.count("spool_squatter_stays") == 1, log
    assert log.count("spool_private_unavailable") == 1, log
    assert "spool_squatter_removed" not in log


def test_fresh_dot_files_cannot_hide_stale_ones_from_the_sweep(
    sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a sweep of 5 dot files a pass, 30 fresh ones uid 65534 keeps in the spool do
    not shield a stale one behind them: each pass goes on from where the last stopped."""
    monkeypatch.setattr(spool_mod, "SWEEP_BATCH", 5)
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    as_user(
        NOBODY,
        "import os, sys; [open(sys.argv[1] + '/.a%d' % i, 'w') for i in range(30)]",
        str(spool),
    )
    as_user(
        NOBODY,
        "import os, sys; open(sys.argv[1], 'w'); os.utime(sys.argv[1], (0, 0))",
        str(spool / ".z"),
    )

    server = start_and_stop(Server(cfg), wait=1.6)  # 8 passes, 0.2 s apart: all 31 seen
    assert not (spool / ".z").exists()
    assert server.stats.rejected["stale_spool_file"] == 1
    assert len(list(spool.glob(".a*"))) == 30


def test_the_client_ignores_an_own_dir_others_may_write(sockdir: Path) -> None:
    """A `spool/<euid>` that other users may write is no private spool: the client uses
    the shared one."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    own = spool / str(os.geteuid())
    own.mkdir(mode=0o700)
    own.chmod(0o777)
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}")
    assert list(own.iterdir()) == []
    assert len([p for p in spool.iterdir() if p.name.endswith(".wa1")]) == 1


@pytest.mark.parametrize(
    ("mode", "why"),
    [(0o700, "no group access"), (0o770, "not setgid"), (0o2750, "group may not write")],
)
def test_the_client_passes_by_an_own_dir_the_daemon_could_not_empty(
    sockdir: Path, mode: int, why: str
) -> None:
    """A `spool/<euid>` in the spool's group that is not 2770 (setgid, group rwx) is one a
    daemon that is not root could not read or clean (a file made there would not even be
    in its group): the client uses the shared spool, as the daemon expects."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    own = spool / str(os.geteuid())
    own.mkdir()
    os.chown(own, os.geteuid(), spool.stat().st_gid)
    own.chmod(mode)
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}")
    assert list(own.iterdir()) == [], why
    assert len([p for p in spool.iterdir() if p.name.endswith(".wa1")]) == 1


def test_an_untrusted_syslog_fallback_is_counted(sockdir: Path) -> None:
    """When uid 4242 has filled the shared spool, uid 65534's event goes to syslog; the
    marker it leaves makes the daemon count one untrusted fallback in status."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    as_user(OTHER, FILL, str(spool), str(notify.SPOOL_CAP), ".x")
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}", user=NOBODY)

    async def scenario() -> dict[str, object]:
        server = Server(cfg)
        async with Running(server):
            # Set aside on one pass, counted once settled (MARKER_SETTLE) on a later one.
            await asyncio.to_thread(
                wait_until,
                lambda: server.stats.syslog_fallbacks["untrusted"] > 0,
                timeout=10,
                what="the fallback counted",
            )
            await asyncio.sleep(0.5)  # later passes count nothing twice
            return server.status()

    status = asyncio.run(scenario())
    assert status["syslog_fallbacks"] == {"untrusted": 1}
    assert status["received"] == 0


def test_a_trusted_syslog_fallback_is_counted(sockdir: Path) -> None:
    """When root's own spool is full (the daemon long down), root's event goes to syslog
    and the daemon counts one trusted fallback once it starts."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    start_and_stop(Server(cfg))
    own = spool / str(os.geteuid())
    for i in range(notify.SPOOL_CAP):
        (own / f".x{i}").touch(mode=0o600)
        os.utime(own / f".x{i}", (YEAR_2100, YEAR_2100))
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}")

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            await asyncio.to_thread(
                wait_until,
                lambda: server.stats.syslog_fallbacks["trusted"] > 0,
                timeout=10,
                what="the fallback counted",
            )
        return server

    assert asyncio.run(scenario()).stats.syslog_fallbacks == {"trusted": 1}


# --- break 4: a hard link of a root-owned file ------------------------------------------


def test_a_hard_link_of_a_root_owned_file_is_never_trusted(sockdir: Path) -> None:
    """uid 65534 writes an event into a root-owned 0666 file and hard-links it into the
    spool: the daemon refuses it (spool_hard_link), reports nothing, and the file stays."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    victim = sockdir / "victim"
    victim.touch()
    victim.chmod(0o666)
    as_user(NOBODY, LINK, str(victim), str(spool / "1.1.wa1"))
    assert (spool / "1.1.wa1").stat().st_uid == 0

    server = start_and_stop(Server(cfg), wait=0.3)
    assert (server.stats.received, server.stats.rejected["spool_hard_link"]) == (0, 1)
    assert victim.exists()
    assert not (spool / "1.1.wa1").exists()


@pytest.mark.parametrize(("mode", "group"), [(0o666, 0), (0o660, 0), (0o644, 0), (0o640, NOBODY)])
def test_a_spool_file_others_may_read_or_write_is_refused(
    sockdir: Path, mode: int, group: int
) -> None:
    """A root-owned spool file anyone else may write, or read (but the spool's group), is
    not root's word."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    path = spool / "1.1.wa1"
    path.write_bytes(encode({"d": "sshd", "a": "192.0.2.1"}))
    path.chmod(mode)
    os.chown(path, 0, group)
    server = start_and_stop(Server(cfg))
    assert (server.stats.received, server.stats.rejected["spool_file_mode"]) == (0, 1)


def test_a_spool_file_the_spools_group_may_read_is_accepted(sockdir: Path) -> None:
    """A root-owned spool file that only the spool's group (the daemon's) may also read,
    as the client makes it in a setgid spool, is root's word."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    os.chown(spool, 0, NOBODY)
    path = spool / "1.1.wa1"
    path.write_bytes(encode({"d": "sshd", "a": "192.0.2.1"}))
    path.chmod(0o640)
    os.chown(path, 0, NOBODY)
    server = start_and_stop(Server(cfg))
    assert (server.stats.received, server.stats.untrusted, dict(server.stats.rejected)) == (
        1,
        0,
        {},
    )


def test_the_client_uses_an_own_dir_only_the_spools_group_may_also_write(
    sockdir: Path,
) -> None:
    """`spool/<euid>` group-writable by the spool's group (the package's 2770
    root:wrapalert) is the client's private spool, and the file it makes there is 0640
    in that group; group-writable by any other group, it is not."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    spool.chmod(0o3777)
    os.chown(spool, 0, NOBODY)
    own = spool / str(os.geteuid())
    own.mkdir()
    os.chown(own, 0, NOBODY)
    own.chmod(0o2770)
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}")
    (spooled,) = own.iterdir()
    st = spooled.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, NOBODY)
    spooled.unlink()
    os.chown(own, 0, OTHER)
    client("d=sshd", f"socket={cfg.daemon.socket}", f"spool={spool}")
    assert list(own.iterdir()) == []
    assert len([p for p in spool.iterdir() if p.name.endswith(".wa1")]) == 1


def test_a_file_in_a_trusted_dir_owned_by_another_uid_is_refused(sockdir: Path) -> None:
    """In root's own spool dir, a file owned by uid 65534 speaks for nobody."""
    cfg = make_config(sockdir)
    spool = shared_spool(cfg)
    start_and_stop(Server(cfg))
    path = spool / str(os.geteuid()) / "1.1.wa1"
    path.write_bytes(encode({"d": "sshd", "a": "192.0.2.1"}))
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    server = start_and_stop(Server(cfg))
    assert (server.stats.received, server.stats.rejected["spool_file_owner"]) == (0, 1)


# --- break 2: an untrusted flood and the forwarding budget ------------------------------


def send_trusted(path: str, count: int) -> None:
    """`count` reports as root (trusted), one per source, on a blocking socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(encode({"d": "sshd", "a": f"198.51.100.{i}"}), path)


def test_an_untrusted_flood_leaves_trusted_records_alone(sockdir: Path) -> None:
    """Under a flood of 2,000 reports from uid 65534, each of 40 trusted events gets its
    own jsonl record, and held records carry trusted = false and marked daemon names."""
    jsonl = sockdir / "events.jsonl"
    cfg = make_config(
        sockdir,
        MaildirSinkConfig(path=sockdir / "Maildir"),
        JsonlSinkConfig(path=jsonl),
    )
    flood = 2000

    async def scenario() -> None:
        server = Server(cfg)
        async with Running(server):
            path = str(cfg.daemon.socket)
            await asyncio.to_thread(as_user, NOBODY, FLOOD, path, str(flood))
            await asyncio.to_thread(send_trusted, path, 40)  # a thread: a full queue blocks
            await asyncio.to_thread(
                wait_until,
                lambda: server.stats.received == flood + 40,
                timeout=30,
                what="every report received",
            )

    asyncio.run(scenario())
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    trusted = [r for r in records if r["type"] == "event" and r["trusted"]]
    held = [r for r in records if r["type"] == "held"]
    assert len(trusted) == 40
    assert held
    assert all(r["trusted"] is False and "daemons" not in r for r in held)
    assert sum(r["events"] for r in held) + len(records) - len(held) == flood + 40


# --- break 5: free text in an IPv6 zone -------------------------------------------------


def test_a_local_sender_cannot_put_text_in_an_address_zone(sockdir: Path) -> None:
    """uid 65534's client report with `a=fe80::1%CRITICAL:root-compromise` is rejected
    (bad_zone), not carried as an address."""
    cfg = make_config(sockdir)

    async def scenario() -> Server:
        server = Server(cfg)
        async with Running(server):
            sock = f"socket={cfg.daemon.socket}"
            forged = "a=fe80::1%CRITICAL:root-compromise"
            await asyncio.to_thread(client, "d=sshd", forged, sock, user=NOBODY)
            await asyncio.to_thread(
                wait_until,
                lambda: server.stats.rejected["bad_zone"] == 1,
                timeout=10,
                what="the rejection",
            )
        return server

    assert asyncio.run(scenario()).stats.received == 0
