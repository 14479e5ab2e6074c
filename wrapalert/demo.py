"""`make run`: the daemon on a demo configuration under one local directory.

Needs neither root nor an MTA: socket, spool, state and a Maildir live under
DIR. Digests are written to the Maildir and printed on the terminal.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

from wrapalert import config, hostsdeny, logs
from wrapalert.daemon.ledger import DeliveryHook
from wrapalert.daemon.server import Server
from wrapalert.mail import Renderer
from wrapalert.model import Digest

DEMO_CONFIG = """\
# wrapalert demo configuration, written by `wrapalert demo`. Edit and re-run.
[daemon]
socket = "{dir}/run/notify.sock"
control_socket = "{dir}/run/control.sock"
state_dir = "{dir}/state"
spool_dir = "{dir}/spool"
# root (the usual spawning service) and you, who run `wrapalert simulate` here.
trusted_uids = [0, {uid}]

[digest]
group_by = ["daemon", "client_addr"]
group_wait = "5s"
group_interval = "1m"
repeat_interval = "1h"

[limits]
mails_per_hour = 12

# The demo refuses through a private table (wrapalert simulate): whether this host's
# /etc/hosts.deny runs the hook is not its business (no alarm-off notice about it).
[hook]
watch = false

[[sink]]
type = "maildir"
path = "{dir}/Maildir"
"""


def run_demo(directory: Path, *, simulate_first: bool = True) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / "wrapalert.toml"
    if not cfg_path.exists():
        cfg_path.write_text(DEMO_CONFIG.format(dir=directory, uid=os.getuid()))
    cfg = config.load(cfg_path)
    logs.configure("kv", "info")
    line = hostsdeny.line(
        hostsdeny.default_form(),
        sys.executable,
        socket=cfg.daemon.socket,
        spool=cfg.daemon.spool_dir,
    )
    wrapalert = shlex.quote(str(Path(sys.executable).with_name("wrapalert")))
    simulate = f"{wrapalert} simulate -c {shlex.quote(str(cfg_path))}"
    print(
        f"""\
wrapalert demo: config {cfg_path}, digests go to {directory / "Maildir"}

The hosts.deny line for this configuration (add it to /etc/hosts.deny to use it for real):

  {line}

To refuse more connections through real libwrap with that line, run in another terminal:

  {simulate}

Digests appear here {cfg.digest.group_wait:g} s after the first refusal. Ctrl-C stops.
""",
        flush=True,
    )
    renderer = Renderer("wrapalert@localhost", ("you",), cfg.digest.template_dir, cfg.story.rule)

    def show(sink: str, digest: Digest, error: Exception | None) -> None:
        if error is not None:
            print(f"!! {sink}: delivery failed: {error}", flush=True)
            return
        msg = renderer.render(digest)
        body = msg.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        print(f"\n=== digest delivered to {sink} ===")
        for header in (
            "Subject",
            *(f"X-Wrapalert-{n}" for n in ("Events", "Untrusted", "Sources", "Held")),
        ):
            print(f"{header}: {msg[header]}")
        print(f"\n{text}", flush=True)

    return asyncio.run(_serve(cfg, show, simulate if simulate_first else None))


async def _serve(cfg: config.Config, show: DeliveryHook, simulate: str | None) -> int:
    server = Server(cfg, on_delivery=show)
    task = asyncio.create_task(server.run())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        await task  # start-up failed: let its error out
        return 1
    if simulate is not None:
        print(f"Simulating a first burst: {simulate}", flush=True)
        proc = await asyncio.create_subprocess_exec(*shlex.split(simulate))
        await proc.wait()
    await task
    return 0
