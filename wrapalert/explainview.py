"""`wrapalert explain` on a terminal: the daemon's answer (daemon/explain.py) in at most
SCREEN_LINES lines of at most SCREEN_WIDTH columns.

Pure: a function of the reply's JSON values and the local time zone. Every
value in the answer that a report carried (daemon names, client names,
reasons, a silence's comment) is attacker text: control characters, C1
controls and bidi overrides included, each is shown as "?", so no terminal
escape reaches the screen. Sections are capped (the busiest first) and say
how much they left out; `--json` has all of it.
"""

from __future__ import annotations

import time
from typing import Any

from wrapalert.digest_view import clip, duration, ordinal

SCREEN_LINES = 24
SCREEN_WIDTH = 80
REFUSAL_ROWS = 6
SCAN_ROWS = 2
PAST_ROWS = 4
SILENCE_ROWS = 2
VERDICT_ROWS = 4
MORE = "... (wrapalert explain --json shows everything)"
# Verdicts about reports (none trusted, none verified, too few): none for a source never
# reported.
UNPROVEN = frozenset({"untrusted only", "unverified transport", "below threshold"})


def clean(value: object) -> str:
    """Text from a report made safe for a terminal: anything not printable becomes "?"."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def stamp(seconds: float, *, year: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M" if year else "%m-%d %H:%M", time.localtime(seconds))


def render(answer: dict[str, Any]) -> str:
    """The answer as lines for an 80x24 terminal."""
    lines = _header(answer)
    lines += _refusals(answer)
    lines += _scans(answer)
    lines += _past(answer)
    lines += _silences(answer)
    fitted = [clip(line.rstrip(), SCREEN_WIDTH) for line in lines]
    if len(fitted) > SCREEN_LINES:
        fitted = [*fitted[: SCREEN_LINES - 1], MORE]
    return "\n".join(fitted)


def _header(answer: dict[str, Any]) -> list[str]:
    query = clean(answer["query"])
    verdicts = answer["verdicts"]
    lines: list[str] = []
    if not answer["known"]:
        lines.append(f"{query}: never heard of it")
        lines.append(
            f"  (it remembers {answer['remembered']:,} recent sources since "
            f"{stamp(answer['since'], year=True)}, and every ban)"
        )
        # Only a rule is news about a source never reported: "0 of 10 refusals" is not.
        verdicts = [v for v in verdicts if v["why"] not in UNPROVEN]
    elif "/" in query:
        addresses = [clean(a) for a in answer["addresses"]]
        count = len(addresses) + answer["more_addresses"]
        lines.append(_listed(f"{query}: {count:,} address(es): ", addresses, count))
    single = "/" not in query and len(verdicts) == 1 and answer["known"]
    if not answer["known"]:
        for verdict in verdicts:
            lines += _verdict(verdict, prefix="  if reported, ")
    elif single:
        target = clean(verdicts[0]["target"])
        lines += _verdict(
            verdicts[0], prefix=f"{query}: " if target == query else f"{query} ({target}): "
        )
    else:
        for verdict in verdicts[:VERDICT_ROWS]:
            lines += _verdict(verdict, prefix=f"  {clean(verdict['target'])}: ")
        if len(verdicts) > VERDICT_ROWS:
            lines.append(f"  ... and {len(verdicts) - VERDICT_ROWS:,} more")
    if answer["mode"] == "dry-run":
        lines.append("  (mode dry-run: bans are decided and reported, never made)")
    if answer["names"]:
        lines.append("Names: " + ", ".join(clean(n) for n in answer["names"]))
    return lines


def _verdict(verdict: dict[str, Any], *, prefix: str) -> list[str]:
    why, detail = clean(verdict["why"]), clean(verdict["detail"])
    ban = verdict.get("ban")
    if ban is not None:
        state = verdict["state"].upper() if verdict["state"] == "banned" else verdict["state"]
        return [
            f"{prefix}{state}: {why}, until {stamp(ban['until'])} ({detail})",
            f"  lift it: {clean(ban['lift'])}",
        ]
    lines = _wrapped(f"{prefix}not banned: {why}", detail)
    grown = verdict.get("next_ban") or {}
    if grown.get("nth", 0) > 1:
        lines.append(
            f"  a ban now would be its {ordinal(grown['nth'])}, {duration(grown['seconds'])}"
        )
    return lines


def _listed(head: str, names: list[str], count: int) -> str:
    """`head` and as many of `names` as fit in a line, then how many more ("+37")."""
    shown: list[str] = []
    for name in names:
        more = count - len(shown) - 1
        line = head + ", ".join([*shown, name]) + (f", +{more:,}" if more else "")
        if len(line) > SCREEN_WIDTH:
            break
        shown.append(name)
    more = count - len(shown)
    rest = ((", " if shown else "") + f"+{more:,}") if more else ""
    return head + ", ".join(shown) + rest


def _wrapped(head: str, detail: str) -> list[str]:
    """ "head: detail" on one line if it fits, else the detail on a line of its own."""
    line = f"{head}: {detail}"
    return [line] if len(line) <= SCREEN_WIDTH else [f"{head}:", f"  {detail}"]


def _refusals(answer: dict[str, Any]) -> list[str]:
    rows = sorted(answer["refusals"], key=lambda r: (-r["count"], -r["last"]))  # busiest first
    if not rows:
        return []
    columns = (  # 77 columns
        f"  {'daemon':<14} {'trust':<9} {'count':>6} {'tcp':>5} {'udp':>5} {'unkn':>5}"
        f"  {'first':<11}  {'last':<11}"
    )
    lines = ["Refusals (trusted: from trusted_uids; tcp: over a handshake the kernel saw)", columns]
    lines += [
        f"  {clip(clean(r['daemon']), 14):<14} {r['trust']:<9} {_count(r['count']):>6}"
        f" {_count(r['tcp']):>5} {_count(r['udp']):>5} {_count(r['unknown']):>5}"
        f"  {stamp(r['first'])}  {stamp(r['last'])}"
        for r in rows[:REFUSAL_ROWS]
    ]
    if len(rows) > REFUSAL_ROWS:
        rest = rows[REFUSAL_ROWS:]
        lines.append(
            f"  ... and {len(rest):,} more daemon(s), {sum(r['count'] for r in rest):,} refusals"
        )
    return lines


def _count(n: int) -> str:
    """A count in at most 5 columns: 99999, then 345k, 9999k, 12M, 45G."""
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 1000}k"
    if n < 10_000_000_000:
        return f"{n // 1_000_000}M"
    return f"{n // 1_000_000_000}G"


def _scans(answer: dict[str, Any]) -> list[str]:
    scans = answer["scans"]
    lines = [f"Scan: {clean(s['text'])} (at {stamp(s['last'])})" for s in scans[-SCAN_ROWS:]]
    if len(scans) > SCAN_ROWS:
        lines.append(f"  ... and {len(scans) - SCAN_ROWS:,} earlier scan(s)")
    return lines


def _past(answer: dict[str, Any]) -> list[str]:
    history, past = answer["history"], answer["past"]
    lines = []
    if history:
        bans = sum(h["bans"] for h in history)
        last = stamp(max(h["last"] for h in history))
        lines.append(f"Bans within ban_memory: {bans:,} (the last at {last})")
    if past:
        lines.append("Ban log, newest first:")
        lines += [f"  {stamp(row['time'])} {_logged(row)}" for row in past[:PAST_ROWS]]
    if answer["past_total"] > PAST_ROWS:
        lines.append(f"  ... and {answer['past_total'] - PAST_ROWS:,} earlier line(s)")
    return lines


def _logged(row: dict[str, Any]) -> str:
    """One ban log line: "203.0.113.7 banned: 10 refusals (2nd ban, 2 h)", "198.51.100.9
    refused: allowlisted (10 refusals)", "203.0.113.7 expired"."""
    target, action, reason = clean(row["target"]), clean(row["action"]), clean(row["reason"])
    nth = row.get("nth", 0)
    grown = f" ({ordinal(nth)} ban, {duration(row['until'] - row['time'])})" if nth > 1 else ""
    if ":" in action:  # "refused: why": the reason is the request's
        return f"{target} {action}" + (f" ({reason})" if reason else "")
    return f"{target} {action}" + (f": {reason}" if reason else "") + grown


def _silences(answer: dict[str, Any]) -> list[str]:
    silences = answer["silences"]
    lines = []
    for s in silences[:SILENCE_ROWS]:
        comment = f" ({clean(s['comment'])})" if s["comment"] else ""
        matchers = " ".join(clean(m) for m in s["matchers"])
        lines.append(f"Silenced by #{s['id']} until {stamp(s['expires'])}: {matchers}{comment}")
    if len(silences) > SILENCE_ROWS:
        lines.append(f"  ... and {len(silences) - SILENCE_ROWS:,} more silence(s)")
    return lines
