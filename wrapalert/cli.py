"""The `wrapalert` command. Exit codes: 0 ok, 1 problem found or failed, 2 usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrapalert import config, hostsdeny, match, notify
from wrapalert.confparse import ConfigError, parse_duration

if TYPE_CHECKING:
    from wrapalert import hookinstall
    from wrapalert.checkhosts import Finding

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
HOSTS_ALLOW, HOSTS_DENY = Path("/etc/hosts.allow"), Path("/etc/hosts.deny")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"configuration file (default {config.DEFAULT_PATH}; built-in defaults if absent)",
    )


def _hosts_deny_line_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    line = sub.add_parser(
        "hosts-deny-line", help="print the hosts.deny entry for this installation"
    )
    _config_arg(line)
    line.add_argument(
        "--daemons",
        default="ALL",
        metavar="LIST",
        help="daemon list for the rule, e.g. sshd,vsftpd (default ALL)",
    )
    line.add_argument(
        "--ident",
        action="store_true",
        help="also report %%u; makes libwrap query identd, delaying the service up to 10 s",
    )
    form = line.add_mutually_exclusive_group()
    form.add_argument(
        "--logger",
        nargs="?",
        const=hostsdeny.LOGGER,
        metavar="PATH",
        help="util-linux logger alone (default /usr/bin/logger): no spool, so an event is "
        "lost while the socket is missing or its queue stays full. The default line runs "
        "logger first and the Python client (which spools) only when logger fails",
    )
    form.add_argument(
        "--client",
        action="store_true",
        help="the Python client alone: spools when the daemon is down, but each refused "
        "connection costs a Python start (about 3x logger's CPU)",
    )
    line.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter the hook runs (default: this one)",
    )
    edit = line.add_argument_group(
        "writing it into the tables",
        "--install writes the line into hosts.deny (an outdated one is replaced) and the "
        "--allow entries into hosts.allow, atomically, with a backup (FILE.wrapalert-bak). "
        "It refuses (exit 2) when the result would refuse ssh to the client of the SSH "
        "session it runs in, or when hosts.allow would let nobody reach sshd; it then says "
        "which line to add to hosts.allow.",
    )
    how = edit.add_mutually_exclusive_group()
    how.add_argument(
        "--install", action="store_true", help="write the line into hosts.deny (see above)"
    )
    how.add_argument(
        "--uninstall", action="store_true", help="remove wrapalert's line(s) from hosts.deny"
    )
    edit.add_argument(
        "--allow",
        nargs="+",
        action="extend",
        default=[],
        metavar="ADDR",
        help="with --install: also let these reach sshd, in hosts.allow: addresses, networks "
        "(192.0.2.0/24, 2001:db8::/32) or host names (which need DNS at login time)",
    )
    edit.add_argument(
        "--force",
        action="store_true",
        help="with --install: write even when the result would lock ssh users out",
    )
    edit.add_argument(
        "--allow-file",
        type=Path,
        default=HOSTS_ALLOW,
        metavar="FILE",
        help=f"the hosts.allow to read and write (default {HOSTS_ALLOW})",
    )
    edit.add_argument(
        "--deny-file",
        type=Path,
        default=HOSTS_DENY,
        metavar="FILE",
        help=f"the hosts.deny to read and write (default {HOSTS_DENY})",
    )


def _ban_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    ban = sub.add_parser(
        "ban", help="the nftables sink's bans: list, add, del (lift one), flush (lift all)"
    )
    ban_sub = ban.add_subparsers(dest="action", required=True, metavar="ACTION")
    ban_list = ban_sub.add_parser(
        "list", help="this host's bans in force, soonest expiry first (--fleet: the fleet's)"
    )
    _config_arg(ban_list)
    ban_list.add_argument("--json", action="store_true")
    ban_list.add_argument(
        "--fleet",
        action="store_true",
        help="the bans followed from other hosts (follow = true), with the hosts that made them",
    )
    ban_add = ban_sub.add_parser(
        "add", help="ban an address (IPv6: its network) now, e.g. add 203.0.113.7 --for 2h"
    )
    _config_arg(ban_add)
    ban_add.add_argument("addr", metavar="ADDR", help="an address, or a network")
    ban_add.add_argument(
        "--for", dest="duration", default=None, metavar="DURATION", help="default: ban_for"
    )
    ban_add.add_argument(
        "--force",
        action="store_true",
        help="ban a network wider than one IPv4 address or than ipv6_prefix, a network of "
        "NAT64, Teredo or 6to4 addresses (each stands for many clients), or the peer of a "
        "logged-in session",
    )
    ban_del = ban_sub.add_parser(
        "del", help="lift a ban now (a fleet ban: not followed again while the fleet keeps it)"
    )
    _config_arg(ban_del)
    ban_del.add_argument("addr", metavar="ADDR")
    ban_flush = ban_sub.add_parser("flush", help="lift every ban now")
    _config_arg(ban_flush)


def _explain_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    explain = sub.add_parser(
        "explain",
        help="everything the running daemon knows of one source or network, and why it is "
        "banned or not (exit 1 if it never heard of it)",
        description="Refusals per daemon and trust (and whether the kernel saw a TCP "
        "handshake), scans, bans in force and past, what keeps it from a ban (allowlist, "
        "this host, a session, untrusted or unverified reports, the threshold's count) and "
        "the silences that mute it. A network (203.0.113.0/24, 2001:db8::/64) takes its "
        "addresses together.",
    )
    _config_arg(explain)
    explain.add_argument(
        "address", metavar="ADDRESS", help="an address or a network, e.g. 203.0.113.7"
    )
    explain.add_argument("--json", action="store_true", help="the whole answer, for scripts")


class _Version(argparse.Action):
    """--version, looked up only when asked (the metadata costs an import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:  # noqa: ANN401 - argparse's
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"wrapalert {version()}")
        parser.exit()


def version() -> str:
    """This installation's version (its package metadata)."""
    from importlib import metadata

    try:
        return metadata.version("wrapalert")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


NOTIFY_USAGE = """\
usage: wrapalert notify KEY=VALUE...

The per-connection client, run by the hosts.deny line for each refused connection
(the same code as notify.py): it sends one event to the daemon's socket, spools it
when the daemon is down, and falls back to syslog. Keys: d (daemon), p (pid), u
(user), c (client), a (address), n (name), h (host), s (server), A (server address),
r (port), R (server port), i (the hook's shell pid), v (verdict); socket=PATH and
spool=PATH configure the client itself. It
parses no options (an expansion may begin with '-'), writes nothing and always exits
0. Print the line that runs it with: wrapalert hosts-deny-line. See wrapalert(8).
"""


def _preview_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    preview = sub.add_parser(
        "preview", help="print the digest for sample or given events, without sending it"
    )
    _config_arg(preview)
    preview.add_argument(
        "--format",
        choices=("text", "html", "eml"),
        default="text",
        help="text part (with the subject), HTML part, or the whole message (default text)",
    )
    preview.add_argument(
        "--notice",
        choices=("alarm-off", "alarm-on", "quiet"),
        default=None,
        help="print a sample notice of this kind instead of a digest (what the hook watch, the "
        "canary and the quiet watch send)",
    )
    preview.add_argument(
        "--events",
        type=Path,
        default=None,
        metavar="FILE",
        help="one event per line, e.g. `d=sshd a=192.0.2.1 n=host.example ago=5m count=3`",
    )


def _canary_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    canary = sub.add_parser(
        "canary",
        help="prove the hook path end to end: real libwrap runs each hook rule's spawn for a "
        "test connection, and the daemon must receive its event (exit 1 naming each rule "
        "that failed); as root",
        description="For each rule of hosts.deny (and hosts.allow) that runs wrapalert's hook, "
        "make real libwrap decide a connection by that rule (sshd or the rule's daemon, from a "
        "documentation address such as 192.0.2.254 or a client the rule names), so its real "
        "spawn line runs; the running daemon, told to expect it, counts it apart (never a "
        "digest, a ban or a scan). Exit 0 when every rule's event arrived within --timeout, "
        "else 1, naming the rules that failed (and the daemon sends an alarm-off notice). The "
        "result shows in wrapalert status and the metrics.",
    )
    _config_arg(canary)
    canary.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the events (default 5, at most 8)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrapalert",
        description="Turn TCP wrappers' refused connections into quiet, reliable digests.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _config_arg(run)
    run.add_argument("--log-format", choices=("kv", "json"), default="kv")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    sub.add_parser(
        "notify",
        help="the per-connection client (KEY=VALUE..., as the hosts.deny line passes them: "
        "see wrapalert(8)); always exits 0",
    )

    _hosts_deny_line_parser(sub)

    silence = sub.add_parser("silence", help="mute matching events for a while (add, list, expire)")
    silence_sub = silence.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = silence_sub.add_parser(
        "add",
        help="add a silence, e.g. add --for 2h daemon=sshd client=203.0.113.0/24",
        description="Matching events are counted but not notified until the silence expires. "
        "Matchers are field=value; client= takes an address or a CIDR network; fields: "
        f"client, {', '.join(f for f in match.FIELDS if f != 'client_addr')}.",
    )
    _config_arg(add)
    add.add_argument(
        "--for",
        dest="duration",
        required=True,
        metavar="DURATION",
        help='how long, e.g. "30m", "2h", "1d"',
    )
    add.add_argument("--comment", default="", help="why (shown by silence list)")
    add.add_argument("matchers", nargs="+", metavar="FIELD=VALUE")
    listing = silence_sub.add_parser("list", help="the active silences")
    _config_arg(listing)
    listing.add_argument("--json", action="store_true")
    expire = silence_sub.add_parser("expire", help="end a silence now")
    _config_arg(expire)
    expire.add_argument("id", type=int)

    _ban_parser(sub)

    _explain_parser(sub)

    status = sub.add_parser("status", help="ask the running daemon for its counters")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    flush = sub.add_parser("flush", help="have the running daemon report every pending group now")
    _config_arg(flush)

    test = sub.add_parser(
        "test-alert",
        help="have the running daemon send a test notification to every sink now, and say "
        "which ones delivered it (exit 1 if one did not)",
    )
    _config_arg(test)

    check = sub.add_parser(
        "check-config",
        help="validate the configuration and print a summary, with where root's mail "
        "(the digests) really goes",
    )
    _config_arg(check)
    check.add_argument(
        "--mail",
        action="store_true",
        help="print only where the digests to root really go (nothing when no sink mails root "
        "through this host's MTA)",
    )

    hosts = sub.add_parser(
        "check-hosts", help="lint hosts.allow and hosts.deny for rules libwrap silently breaks"
    )
    _config_arg(hosts)
    hosts.add_argument("--allow", type=Path, default=HOSTS_ALLOW, metavar="FILE")
    hosts.add_argument("--deny", type=Path, default=HOSTS_DENY, metavar="FILE")

    _canary_parser(sub)

    sim = sub.add_parser(
        "simulate",
        help="refuse connections through real libwrap with this installation's hosts.deny line",
    )
    _config_arg(sim)
    sim.add_argument("--count", type=int, default=3, help="connections per daemon and address")
    sim.add_argument("--daemons", default="sshd,in.ftpd", metavar="LIST")
    sim.add_argument("--from", dest="addrs", default="203.0.113.7,2001:db8::66", metavar="ADDRS")

    demo = sub.add_parser(
        "demo", help="run the daemon on a demo config under DIR (no root, no MTA)"
    )
    demo.add_argument("--dir", type=Path, default=Path("demo"))
    demo.add_argument(
        "--no-simulate", action="store_true", help="do not send a first burst of simulated refusals"
    )

    _preview_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["notify"]:
        if args_list[1:] in (["-h"], ["--help"]):  # a hook line passes KEY=VALUE words only
            print(NOTIFY_USAGE, end="")
            return EXIT_OK
        # No option parsing for the client: an expansion may begin with "-".
        notify.main(args_list[1:])
    args = build_parser().parse_args(args_list)
    handler = {
        "run": cmd_run,
        "hosts-deny-line": cmd_hosts_deny_line,
        "check-config": cmd_check_config,
        "check-hosts": cmd_check_hosts,
        "simulate": cmd_simulate,
        "canary": cmd_canary,
        "demo": cmd_demo,
        "preview": cmd_preview,
        "status": cmd_status,
        "flush": cmd_flush,
        "test-alert": cmd_test_alert,
        "silence": cmd_silence,
        "ban": cmd_ban,
        "explain": cmd_explain,
    }[args.verb]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return EXIT_PROBLEM


def cmd_run(args: argparse.Namespace) -> int:
    from wrapalert import logs
    from wrapalert.daemon.bankernel import TableInUseError
    from wrapalert.daemon.server import Server
    from wrapalert.daemon.store import StateError

    cfg = config.load(args.config)
    logs.configure(args.log_format, args.log_level)
    try:
        asyncio.run(Server(cfg, config_path=args.config).run())
    except (OSError, StateError, TableInUseError) as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_hosts_deny_line(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    form: hostsdeny.Form = "logger" if args.logger else "client" if args.client else "durable"
    if (args.allow or args.force) and not args.install:
        print("wrapalert: --allow and --force go with --install", file=sys.stderr)
        return EXIT_USAGE
    if args.uninstall:
        return _uninstall(args.deny_file)
    from wrapalert import lockout

    try:
        line = hosts_deny_line(
            cfg,
            args.python,
            daemons=args.daemons,
            ident=args.ident,
            form=form,
            logger=args.logger or hostsdeny.LOGGER,
        )
        patterns = [lockout.allow_pattern(addr) for addr in args.allow]
    except ValueError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.install:
        print(line)
        return EXIT_OK
    return _install(args, line, patterns)


def _edit_command(args: argparse.Namespace) -> str:
    """`wrapalert hosts-deny-line` with the options that name this config and these files."""
    command = "wrapalert hosts-deny-line"
    if args.config is not None:
        command += f" -c {args.config}"
    if args.allow_file != HOSTS_ALLOW:
        command += f" --allow-file {args.allow_file}"
    if args.deny_file != HOSTS_DENY:
        command += f" --deny-file {args.deny_file}"
    return command


def _install(args: argparse.Namespace, line: str, patterns: list[str]) -> int:
    """Write the line (and the --allow entries) unless that locks ssh users out."""
    from wrapalert import hookinstall, lockout

    allow_path, deny_path = args.allow_file, args.deny_file
    try:
        allow_before = hookinstall.read(allow_path)
        deny_before = hookinstall.read(deny_path)
    except hookinstall.InstallError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    allow = hookinstall.with_allowed(allow_before or b"", [lockout.allow_line(p) for p in patterns])
    deny = hookinstall.with_hook(deny_before or b"", line)
    session = lockout.ssh_session(os.environ)
    tables = lockout.Tables(allow.data, deny.data, str(allow_path), str(deny_path))
    risks = lockout.findings(tables, session, command=_edit_command(args))
    for risk in risks:
        print(risk.render(), file=sys.stderr)
    if risks and not args.force:
        print(
            "wrapalert: nothing written: these tables would lock ssh users out (see above); "
            "--force writes them anyway",
            file=sys.stderr,
        )
        return EXIT_USAGE
    same = hookinstall.find(deny.data)
    try:
        _apply(allow_path, allow, allow_before, "already allows them" if patterns else "")
        _apply(deny_path, deny, deny_before, f"the wrapalert line is already there (line {same})")
    except hookinstall.InstallError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    daemon = "sshd" if args.daemons == "ALL" else args.daemons.split(",")[0].strip()
    first = hookinstall.shadowing(deny.data, daemon)
    if first is not None:
        print(
            f"wrapalert: note: {deny_path} line {first.line} ({lockout.shorten(first.text)}) "
            f"refuses {daemon} first: the hook never runs for the clients it names; move the "
            "wrapalert line above it",
            file=sys.stderr,
        )
    if risks:
        print("wrapalert: written anyway (--force): ssh users are locked out", file=sys.stderr)
    elif session is not None:
        print(f"ssh from this session's client {session.client} stays allowed.")
    else:
        print(f"no SSH session found: checked that {allow_path} lets a client reach sshd.")
    return EXIT_OK


def _apply(path: Path, edit: hookinstall.Edit, before: bytes | None, unchanged: str) -> None:
    from wrapalert import hookinstall

    if not edit.changed:
        if unchanged:
            print(f"{path}: {unchanged}")
        return
    backup = hookinstall.replace(path, edit.data, before=before)
    kept = f" (the previous contents: {backup})" if backup else ""
    print(f"{path}: {'; '.join(edit.changes)}{kept}")


def _uninstall(deny_path: Path) -> int:
    from wrapalert import hookinstall

    try:
        before = hookinstall.read(deny_path)
        edit = hookinstall.without_hook(before or b"")
        if not edit.changed:
            print(f"{deny_path}: no wrapalert line; nothing to remove")
            return EXIT_OK
        backup = hookinstall.replace(deny_path, edit.data, before=before)
    except hookinstall.InstallError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"{deny_path}: {'; '.join(edit.changes)} (the previous contents: {backup})")
    return EXIT_OK


def hosts_deny_line(
    cfg: config.Config,
    python: str,
    *,
    daemons: str = "ALL",
    ident: bool = False,
    form: hostsdeny.Form = "client",
    logger: str = hostsdeny.LOGGER,
) -> str:
    """This installation's line in one of its forms (`client`: the Python client alone)."""
    return install(cfg, python).line(daemons, ident, form, logger)


def install(cfg: config.Config, python: str) -> hostsdeny.Install:
    """What this configuration's line names, with `python` as the hook's interpreter."""
    return hostsdeny.Install.here(python, cfg.daemon.socket, cfg.daemon.spool_dir)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.mail:
        for note in mail_notes(cfg):
            print(note[2:])
        return EXIT_OK
    d = cfg.digest
    print(f"ok: {cfg.source}")
    print(
        f"  socket {cfg.daemon.socket}, spool {cfg.daemon.spool_dir}, "
        f"trusted uids {list(cfg.daemon.trusted_uids)}"
    )
    if others := [uid for uid in cfg.daemon.trusted_uids if uid != 0]:
        # Not an error here: only the running service knows its user namespace.
        print(
            f"  note: trusted uids {others} are not root; the packaged service "
            "(PrivateUsers=yes) refuses them unless a drop-in sets PrivateUsers=no"
        )
    print(
        f"  group by {', '.join(d.group_by)}; wait {d.group_wait:g}s, "
        f"interval {d.group_interval:g}s, repeat {d.repeat_interval:g}s"
    )
    print(
        f"  at most {cfg.limits.mails_per_hour} mails per hour per sink, "
        f"{cfg.limits.max_groups} groups"
    )
    from wrapalert.sinks import registry

    for sink in cfg.sinks:
        print(f"  sink {sink.name}: {registry.describe(sink)}")
    for note in mail_notes(cfg):
        print(note)
    return EXIT_OK


def mail_notes(cfg: config.Config, root: Path = Path("/")) -> list[str]:
    """Where root's mail really goes, for the sinks that mail root through this host's MTA
    (smtp to this host, sendmail): a warning when no person reads it."""
    import socket

    from wrapalert import mailroute
    from wrapalert.sinks.sendmail import SendmailSinkConfig
    from wrapalert.sinks.smtp import SmtpSinkConfig

    names = (*mailroute.local_names(root, cfg.daemon.hostname), socket.gethostname())
    sinks = [
        s.name
        for s in cfg.sinks
        if (isinstance(s, SmtpSinkConfig) and mailroute.is_local(s.host, names))
        or isinstance(s, SendmailSinkConfig)
        if mailroute.to_root(s.to, names)
    ]
    if not sinks:
        return []
    route = mailroute.root_route(root)
    label = "warning" if route.reaches_person is False else "note"
    lines = [f"  {label}: sink {', '.join(sinks)} mails root, and {route.where}"]
    if route.fix:
        lines.append(f"    fix: {route.fix}")
    return lines


def cmd_check_hosts(args: argparse.Namespace) -> int:
    from wrapalert import checkhosts

    cfg = config.load(args.config)
    command = hostsdeny.line_command(args.config)
    installation = checkhosts.Installation.of(install(cfg, sys.executable), command)
    findings = checkhosts.check_files(args.allow, args.deny, installation)
    edit = command
    if args.allow != HOSTS_ALLOW:
        edit += f" --allow-file {args.allow}"
    if args.deny != HOSTS_DENY:
        edit += f" --deny-file {args.deny}"
    findings += _lockout(args.allow, args.deny, edit)
    for finding in findings:
        print(finding.render())
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"{args.allow}, {args.deny}: {errors} error(s), {warnings} warning(s)")
    return EXIT_PROBLEM if errors else EXIT_OK


def _lockout(allow: Path, deny: Path, command: str) -> list[Finding]:
    """The lock-out risks of these tables (none when one cannot be read: that is reported)."""
    from wrapalert import hookinstall, lockout

    try:
        tables = lockout.Tables(
            hookinstall.read(allow) or b"", hookinstall.read(deny) or b"", str(allow), str(deny)
        )
    except hookinstall.InstallError:
        return []
    return lockout.findings(tables, lockout.ssh_session(os.environ), command=command)


def duration(text: str) -> float:
    """A duration given on the command line: "2h", "30m", ... or plain seconds ("600"),
    which TOML writes as a number (a quoted "600" in the config file stays refused)."""
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return parse_duration(float(text))
    return parse_duration(text)


def printable(text: str) -> str:
    """Text from outside (a server's error message) safe for a terminal: anything not
    printable, C1 controls and bidi overrides included, shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in text)


def cmd_simulate(args: argparse.Namespace) -> int:
    from wrapalert.simulate import simulate

    cfg = config.load(args.config)
    daemons = [d for d in args.daemons.split(",") if d]
    addrs = [a for a in args.addrs.split(",") if a]
    if args.count < 1 or not daemons or not addrs:
        print("wrapalert: simulate needs --count >= 1, a daemon and an address", file=sys.stderr)
        return EXIT_USAGE
    line = hosts_deny_line(cfg, sys.executable, form=hostsdeny.default_form())
    return simulate(line, daemons, addrs, args.count)


def cmd_canary(args: argparse.Namespace) -> int:
    from wrapalert import canary

    if not 0 < args.timeout <= 8:
        print("wrapalert: --timeout is more than 0 and at most 8 seconds", file=sys.stderr)
        return EXIT_USAGE
    return canary.run(config.load(args.config), args.timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    from wrapalert.demo import run_demo

    try:
        return run_demo(args.dir.resolve(), simulate_first=not args.no_simulate)
    except OSError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


def ask(args: argparse.Namespace, cmd: str) -> dict[str, Any] | None:
    """The running daemon's reply to `cmd`; None (said on stderr) if it cannot answer."""
    from wrapalert.daemon import control

    cfg = config.load(args.config)
    try:
        return control.request(cfg.daemon.control_socket, cmd)
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from wrapalert.daemon import control

    cfg = config.load(args.config)
    try:
        reply = control.request(cfg.daemon.control_socket, "status")
    except control.NotRunningError as exc:
        if not control.listening(cfg.daemon.socket):
            print(f"wrapalert: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        # Socket activation: systemd holds the socket and starts the daemon on the first
        # event; until then there is no daemon to ask, and nothing is wrong.
        if args.json:
            print(json.dumps({"idle": True, "socket": str(cfg.daemon.socket)}, indent=2))
        else:
            print(
                f"wrapalert is idle: {cfg.daemon.socket} is listening (socket activation) and "
                "starts the daemon on the first refused connection; no counters until then"
            )
        return EXIT_OK
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    status = reply["status"]
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return status_exit(status)


def status_exit(status: dict[str, Any]) -> int:
    """`wrapalert status`'s exit code: 1 when something needs a person (the alarm is off:
    refusals no longer reach the daemon; a sink's digests set aside, a state held in memory
    only, bans the kernel does not hold, banning on but no source verifiable)."""
    if (status.get("hook") or {}).get("ok") is False:
        return EXIT_PROBLEM
    state = status.get("state", {})
    failing = any(s.get("held_failed") for s in status.get("sinks", {}).values())
    # Banning is on but no source can be verified (the kernel does not answer): off, in fact.
    blind = (status.get("bans") or {}).get("mode") == "enforce" and bool(
        (status.get("evidence") or {}).get("error")
    )
    # Sharing bans, but no peer of the fleet took a post or answered a look.
    cut_off = (status.get("fleet") or {}).get("ok") is False
    if failing or blind or cut_off or not state.get("ok", True) or bans_failing(status):
        return EXIT_PROBLEM
    return EXIT_OK


def bans_failing(status: dict[str, Any]) -> bool:
    """Whether the nftables sink does not enforce what its book holds: the kernel refuses
    changes, or bans the book holds are not in the kernel."""
    bans = status.get("bans") or {}
    kernel = bans.get("kernel") or {}
    return bool(bans.get("last_error")) or kernel.get("in_sync") is False


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """What the kernel said of the sources (daemon/witness.py): verified by a TCP handshake,
    udp, or unknown and why; and its error while it cannot answer."""
    counts = {k: v for k, v in evidence.items() if k != "error" and isinstance(v, int)}
    why = {k: v for k, v in counts.items() if k not in ("tcp", "udp")}
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(why.items())) or "none"
    lines = [
        (
            f"verified (tcp)  {counts.get('tcp', 0):>10,}   (udp {counts.get('udp', 0):,}, "
            f"unknown {sum(why.values()):,}: {reasons})"
        )
    ]
    if evidence.get("error"):
        error = printable(str(evidence["error"]))
        lines.append(f"                EVIDENCE UNAVAILABLE: {error}: no refusal can ban")
    return lines


def _hook_lines(hook: dict[str, Any]) -> list[str]:
    """Whether refusals reach the daemon: ALARM OFF with each problem first (it is why
    status exits 1), the canary's last run, the quiet daemons."""
    if not hook:
        return []
    lines = []
    watching = hook.get("watching") or []
    if hook.get("ok") is False:
        lines.append("ALARM OFF       refused connections no longer reach wrapalert:")
        for p in hook.get("problems") or []:
            where = f"{p['path']} line {p['line']}" if p.get("line") else p["path"]
            lines.append(f"                {printable(where)}: {printable(str(p['message']))}")
            lines.append(f"                  fix: {printable(str(p['fix']))}")
    elif watching:
        lines.append(f"hook            ok ({', '.join(map(printable, watching))} watched)")
    else:
        lines.append("hook            not watched ([hook] watch = false)")
    canary = hook.get("canary") or {}
    if canary.get("last_run") is None:
        lines.append("canary          never run (wrapalert canary)")
    else:
        success = canary.get("last_success")
        last = f"last passed {_local(success)}" if success else "never passed"
        verdict = "passed" if canary.get("ok") else "FAILED"
        lines.append(f"canary          {verdict} at {_local(canary['last_run'])} ({last})")
    lines.extend(
        f"quiet           {printable(str(q['daemon']))}: no refusals since {_local(q['last_seen'])}"
        for q in hook.get("quiet") or []
    )
    return lines


def format_status(status: dict[str, Any]) -> str:
    """The status object as a few aligned lines for a terminal."""
    rejected = status["rejected"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    fallbacks = status.get("syslog_fallbacks", {})
    lines = [
        *_hook_lines(status.get("hook") or {}),
        (
            f"received        {status['received']:>10,}   (untrusted {status['untrusted']:,}, "
            f"from spool {status['spooled']:,})"
        ),
        f"rejected        {sum(rejected.values()):>10,}   ({reasons})",
        # The hook line's second copy of one refusal (daemon/twins.py): dropped.
        f"duplicates      {status.get('duplicates', 0):>10,}",
        *_evidence_lines(status.get("evidence") or {}),
        # Events clients could neither send nor spool: they went to syslog, not to us.
        "to syslog       {:>10,}   (trusted {:,}, untrusted {:,})".format(
            sum(fallbacks.values()), fallbacks.get("trusted", 0), fallbacks.get("untrusted", 0)
        ),
        f"groups          {status['groups']:>10,}",
        f"pending events  {status['pending_events']:>10,}",
        f"outbox          {status['outbox']:>10,}",
        f"digests         {status['digests']:>10,}",
    ]
    for name, sink in sorted(status["sinks"].items()):
        events = sink["events_delivered"]
        line = (
            f"sink {name}: delivered {sink['delivered']:,} ({events:,} "
            f"event{'s' if events != 1 else ''}), failed {sink['failed']:,}, "
            f"queued {sink['queued']:,}"
        )
        if sink.get("held_failed"):
            line += f", {sink['held_failed']} set aside until reload"
        if sink.get("last_error"):
            line += f"; last error: {printable(str(sink['last_error']))}"
        lines.append(line)
    lines += _ban_lines(status)
    state = status["state"]
    if state.get("ok"):
        lines.append(f"state           {state['path']}")
    else:
        lines.append(f"state           IN MEMORY ONLY: {state['error']}")
    if state.get("moved_aside"):
        lines.append(f"                a damaged database was moved to {state['moved_aside']}")
    return "\n".join(lines)


def _ban_lines(status: dict[str, Any]) -> list[str]:
    """The nftables sink's bans, the fleet's and the heartbeats."""
    lines: list[str] = []
    bans = status.get("bans") or {}
    if bans.get("mode") is not None:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(bans["refused"].items())) or "none"
        lines.append(
            f"bans            {bans['active']:>10,}   (mode {bans['mode']}; made {bans['added']:,},"
            f" would ban {bans['would_ban']:,}, expired {bans['expired']:,}, lifted"
            f" {bans['lifted']:,}, refused: {refused})"
        )
        kernel = bans.get("kernel") or {}
        if kernel.get("in_sync") is False:
            lines.append(
                f"                NOT IN THE KERNEL: {kernel['missing']:,} of {bans['active']:,} "
                f"bans are not dropped (table inet {kernel['table']}: "
                f"{printable(str(kernel['found']))}); repairing"
            )
        elif kernel.get("in_sync"):
            repairs = ", ".join(f"{k} {v}" for k, v in sorted(kernel["repairs"].items()))
            lines.append(
                f"                kernel: in step (table inet {kernel['table']}, checked every "
                f"{kernel['reconcile_every']:g}s; repaired: {repairs or 'nothing'})"
            )
        if bans.get("last_error"):
            lines.append(f"                last kernel error: {printable(str(bans['last_error']))}")
        lines += _fleet_lines(bans.get("fleet") or {}, status.get("fleet"))
    for name, beat in sorted((status.get("heartbeat") or {}).items()):
        sent = f"last sent {_local(beat['sent'])}" if beat.get("sent") else "not sent yet"
        error = f"; FAILING: {printable(str(beat['last_error']))}" if beat.get("last_error") else ""
        lines.append(f"heartbeat {name}: every {beat['interval']:g}s, {sent}{error}")
    return lines


def _fleet_lines(book: dict[str, Any], fleet: dict[str, Any] | None) -> list[str]:
    """The fleet's bans apart from this host's own, and the fleet's peers."""
    if fleet is None:
        return []
    lines = []
    if fleet.get("follow"):
        refused = ", ".join(f"{k} {v}" for k, v in sorted(book.get("refused", {}).items()))
        hosts = ", ".join(book.get("hosts", [])) or "none"
        lines.append(
            f"fleet bans      {book.get('active', 0):>10,}   (from {hosts}; followed "
            f"{book.get('added', 0):,}, ended {book.get('ended', 0):,}, refused: "
            f"{refused or 'none'}, lifted here by hand {book.get('exceptions', 0):,})"
        )
    waiting = fleet.get("waiting", 0) if fleet.get("follow") else 0
    lines.append(
        f"fleet           sink {fleet['sink']}: {book.get('published', 0):,} ban(s) of this "
        "host's published"
        + (f"; {waiting:,} source(s) wait for fleet_min_hosts" if waiting else "")
    )
    for peer, state in sorted(fleet.get("peers", {}).items()):
        if state.get("ok") is False:
            how = f"FAILING: {printable(str(state.get('last_error')))}"
        else:
            how = "ok" if state.get("ok") else "not asked yet"
        lines.append(f"                peer {printable(peer)}: {how}")
    rejected = fleet.get("rejected") or {}
    if rejected:
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items()))
        lines.append(f"                malformed alerts skipped: {why}")
    if fleet.get("ok") is False:
        lines.append("                NO PEER ANSWERS: bans are neither shared nor followed")
    return lines


def cmd_silence(args: argparse.Namespace) -> int:
    import time

    from wrapalert.daemon import control

    cfg = config.load(args.config)
    path = cfg.daemon.control_socket
    try:
        if args.action == "add":
            try:
                seconds = duration(args.duration)
                matchers = [str(match.Matcher.parse(m)) for m in args.matchers]
            except (TypeError, ValueError) as exc:  # MatcherError is a ValueError
                print(f"wrapalert: {exc}", file=sys.stderr)
                return EXIT_USAGE
            reply = control.request(
                path, "silence_add", matchers=matchers, seconds=seconds, comment=args.comment
            )
            until = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(reply["expires"]))
            note = "" if reply["durable"] else " (state unavailable: lasts until restart)"
            print(f"silence {reply['id']}: {' '.join(reply['matchers'])} until {until}{note}")
        elif args.action == "list":
            silences = control.request(path, "silence_list")["silences"]
            if args.json:
                print(json.dumps(silences, indent=2))
            for s in [] if args.json else silences:
                until = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(s["expires"]))
                comment = f"  # {s['comment']}" if s["comment"] else ""
                print(f"{s['id']:>5}  until {until}  {' '.join(s['matchers'])}{comment}")
            if not silences and not args.json:
                print("no active silences")
        else:
            control.request(path, "silence_expire", id=args.id)
            print(f"silence {args.id} expired")
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_ban(args: argparse.Namespace) -> int:
    from wrapalert.daemon import control
    from wrapalert.digest_view import ordinal

    cfg = config.load(args.config)
    path = cfg.daemon.control_socket
    try:
        if args.action == "list":
            reply = control.request(path, "ban_list")
            origin = "fleet" if args.fleet else "local"
            if args.json:
                print(json.dumps([b for b in reply["bans"] if _origin(b) == origin], indent=2))
            else:
                print(format_bans(reply, fleet=args.fleet))
        elif args.action == "add":
            extra: dict[str, Any] = {}
            if args.duration is not None:
                try:
                    extra["seconds"] = duration(args.duration)
                except (TypeError, ValueError) as exc:
                    print(f"wrapalert: {exc}", file=sys.stderr)
                    return EXIT_USAGE
            if args.force:
                extra["force"] = True
            ban = control.request(path, "ban_add", addr=args.addr, **extra)
            what = "would be banned (dry-run)" if ban["dry_run"] else "banned"
            nth = ban.get("nth", 0)
            count = f" (its {ordinal(nth)} ban within ban_memory)" if nth > 1 else ""
            print(f"{ban['target']} {what} until {_local(ban['until'])}{count}")
        elif args.action == "del":
            reply = control.request(path, "ban_del", addr=args.addr)
            print(f"{reply['target']}: ban lifted")
        else:
            reply = control.request(path, "ban_flush")
            print(f"{reply['lifted']} ban(s) lifted")
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from wrapalert import explainview
    from wrapalert.daemon import control
    from wrapalert.netaddr import query_network

    try:
        net = query_network(args.address)  # the daemon checks again; an error here is usage
    except ValueError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = config.load(args.config)
    try:
        reply = control.request(cfg.daemon.control_socket, "explain", addr=str(net))
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    answer = reply["explanation"]
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(explainview.render(answer))
    return EXIT_OK if answer["known"] else EXIT_PROBLEM


def _local(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def _origin(ban: dict[str, Any]) -> str:
    return "fleet" if ban.get("origin") == "fleet" else "local"


def format_bans(reply: dict[str, Any], *, fleet: bool = False) -> str:
    """`ban list` for a terminal: one line per ban; this host's own, or (`fleet`) those
    followed from other hosts, each with which of its target's bans it is and how long
    it lasts ("3rd ban, 4 h"). Each list says how many the other one holds."""
    from wrapalert.digest_view import duration, ordinal

    if reply.get("mode") is None:
        return "no nftables sink is configured"
    mine = [b for b in reply["bans"] if _origin(b) == "local"]
    theirs = [b for b in reply["bans"] if _origin(b) == "fleet"]
    shown = theirs if fleet else mine
    lines = [
        f"{b['target']:<24} until {_local(b['until'])}  {printable(str(b['reason']))}"
        + (
            f" ({ordinal(b['nth'])} ban, {duration(b['until'] - b['since'])})"
            if b.get("nth", 0) > 1
            else ""
        )
        + ("  (dry-run: not in the kernel)" if b["dry_run"] else "")
        for b in shown
    ]
    if not lines:
        what = "fleet bans" if fleet else "bans"
        lines.append(f"no {what} (table inet {reply['table']}, mode {reply['mode']})")
    if not fleet and theirs:
        lines.append(
            f"and {len(theirs):,} ban(s) followed from the fleet: wrapalert ban list --fleet"
        )
    elif fleet and mine:
        lines.append(f"and {len(mine):,} ban(s) of this host's own: wrapalert ban list")
    return "\n".join(lines)


def cmd_flush(args: argparse.Namespace) -> int:
    reply = ask(args, "flush")
    if reply is None:
        return EXIT_PROBLEM
    if reply["digests"]:
        events = reply["events"]
        print(
            f"flushed: {events:,} event{'s' if events != 1 else ''}, queued as a digest to each "
            "sink they route to"
        )
    else:
        print("nothing pending")
    return EXIT_OK


def cmd_test_alert(args: argparse.Namespace) -> int:
    reply = ask(args, "test_alert")
    if reply is None:
        return EXIT_PROBLEM
    results: dict[str, str] = reply["sinks"]
    if not results:
        print("no sinks configured")
        return EXIT_PROBLEM
    width = max(map(len, results))
    for name, result in results.items():
        print(f"{name:<{width}}  {printable(result)}")
    # "delivered" means the MTA took it: say where root's copy ends.
    for note in mail_notes(config.load(args.config)):
        print(note.strip() if not note.startswith("    ") else note[2:])
    return EXIT_OK if all(r == "delivered" for r in results.values()) else EXIT_PROBLEM


def cmd_preview(args: argparse.Namespace) -> int:
    from wrapalert import logs, preview

    cfg = config.load(args.config)
    logs.configure("kv", "warning")  # template errors go to stderr, not into the preview
    if args.notice is not None:
        if args.events is not None:
            print("wrapalert: --notice and --events do not go together", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.buffer.write(preview.preview_notice(cfg, args.notice, args.format))
        sys.stdout.flush()
        return EXIT_OK
    try:
        out = preview.preview(cfg, args.events, args.format)
    except preview.EventsError as exc:
        print("\n".join(f"wrapalert: {p}" for p in exc.problems), file=sys.stderr)
        return EXIT_PROBLEM
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
