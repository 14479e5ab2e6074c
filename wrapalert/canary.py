"""`wrapalert canary`: prove the hook path end to end, through real libwrap, now.

For each rule of hosts.deny (and hosts.allow) whose spawn runs wrapalert's
hook, the canary picks a connection libwrap decides by that very rule
(hookcheck.probe: sshd or the rule's own daemon, a documentation address
such as 192.0.2.254 or a client the rule names, checked against the model of
libwrap's decision), tells the running daemon to expect it (its pid, which is
libwrap's %p in the hook's event, the daemon and the client), then asks the
real libwrap (`hosts_ctl`, libwrap.py) about it: the rule's real `spawn`
line runs, logger and the client fallback as they are, and the daemon claims
the event it sends (daemon/canaries.py: counted apart, never an attack).

It passes (exit 0) when every rule's event arrived within `--timeout`
seconds; else it names each rule that failed and why (exit 1), and the
daemon sends an alarm-off notice. The result is in `wrapalert status` and
the metrics (`wrapalert_canary_last_success_timestamp_seconds`). Run it as
root (the .deb's wrapalert-canary.timer does, daily): the hook's events
count only from trusted uids, and the real hook runs as root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from wrapalert import config, hookcheck
from wrapalert.daemon import control
from wrapalert.hookcheck import HookRule, Probe
from wrapalert.libwrap import LibWrap, LibWrapMissingError

TIMEOUT = 5.0
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _label(rule: HookRule, path: Path) -> str:
    return f"{path} line {rule.line}"


UNPROBED = (
    "no connection reaches it: hosts.allow or an earlier rule decides first for every "
    "documentation address and every client it names (or it names host names only), so "
    "its spawn never runs"
)


def plan(cfg: config.Config) -> tuple[list[Probe], list[HookRule]]:
    """Each hook rule's probe, and the hook rules no connection reaches."""
    hook = cfg.hook
    tables = hookcheck.Tables(
        _read(hook.hosts_allow), _read(hook.hosts_deny), str(hook.hosts_allow), str(hook.hosts_deny)
    )
    rules = hookcheck.hook_rules(tables.deny or b"", "deny")
    rules += hookcheck.hook_rules(tables.allow or b"", "allow")
    probes, unprobed = [], []
    for rule in rules:
        probe = hookcheck.probe(tables, rule, read=_pattern_file)
        if probe is None:
            unprobed.append(rule)
        else:
            probes.append(probe)
    return probes, unprobed


def _pattern_file(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def run(cfg: config.Config, timeout: float = TIMEOUT) -> int:
    """The canary, printing what it does; its exit code."""
    if os.geteuid() not in cfg.daemon.trusted_uids:
        print(
            f"wrapalert: run the canary as root (or a uid in trusted_uids): the hook's events "
            f"count only from trusted uids, and the real hook runs as root (this is uid "
            f"{os.geteuid()})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    hook = cfg.hook
    probes, unprobed = plan(cfg)
    missing = None if probes or unprobed else f"no rule of {hook.hosts_deny} runs wrapalert's hook"
    path = cfg.daemon.control_socket
    try:
        started = control.request(
            path,
            "canary_start",
            pid=os.getpid(),
            probes=[_wire(p.rule, hook) | {"daemon": p.daemon, "client": p.client} for p in probes],
        )
    except control.ControlError as exc:
        print(f"wrapalert: {exc}: the canary needs the running daemon", file=sys.stderr)
        return EXIT_PROBLEM
    failures = _refuse(probes, hook)
    try:
        result = control.request(
            path,
            "canary_finish",
            run=started["run"],
            failures=failures,
            timeout=timeout,
            unprobed=[_wire(rule, hook) | {"why": UNPROBED} for rule in unprobed],
            missing=missing,
        )
    except control.ControlError as exc:
        print(f"wrapalert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return _report(result)


def _wire(rule: HookRule, hook: config.HookConfig) -> dict[str, Any]:
    path = hook.hosts_deny if rule.table == "deny" else hook.hosts_allow
    return {"path": str(path), "line": rule.line, "rule": rule.text}


def _refuse(probes: list[Probe], hook: config.HookConfig) -> dict[str, str]:
    """Ask the real libwrap about each probe (its spawn runs); {index: why} for those it
    did not decide as the rule says (no event will come)."""
    if not probes:
        return {}
    try:
        wrap = LibWrap(hook.hosts_allow, hook.hosts_deny)
    except LibWrapMissingError as exc:
        return {str(i): str(exc) for i in range(len(probes))}
    failures = {}
    for i, probe in enumerate(probes):
        allowed = wrap.allowed(probe.daemon, probe.client)
        if allowed != (probe.rule.table == "allow"):
            said = "allowed" if allowed else "refused"
            failures[str(i)] = (
                f"real libwrap {said} {probe.daemon} from {probe.client} without this rule "
                "deciding (another line did): its spawn did not run"
            )
    return failures


def _report(result: dict[str, Any]) -> int:
    """Each rule's outcome, one line each; the exit code."""
    probes = result.get("probes") or []
    for p in probes:
        head = f"canary: {p['where']}: {p['daemon']} from {p['client']}"
        if p.get("after") is not None:
            print(f"{head}: arrived after {p['after']:.3f} s")
        else:
            print(f"{head}: FAILED: {_printable(str(p.get('why')))}")
    for p in result.get("unprobed") or []:
        print(f"canary: {p['where']}: FAILED: {_printable(str(p.get('why')))}")
    if result.get("missing"):
        print(f"canary: FAILED: {_printable(str(result['missing']))}")
    total = len(probes) + len(result.get("unprobed") or [])
    passed = sum(p.get("after") is not None for p in probes)
    if result.get("passed"):
        print(f"canary: every hook rule reached wrapalert ({passed} of {total})")
        return EXIT_OK
    print(
        f"canary: {total - passed} of {total} hook rule{'s' if total != 1 else ''} did not reach "
        "wrapalert (wrapalert check-hosts shows what is wrong with the tables)",
        file=sys.stderr,
    )
    return EXIT_PROBLEM


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
