"""`wrapalert explain` on a terminal (wrapalert/explainview.py): answers as the daemon gives
them, drawn in at most 80x24, attacker text harmless, the sections capped."""

from __future__ import annotations

from typing import Any

from wrapalert.explainview import SCREEN_LINES, SCREEN_WIDTH, render

NOW = 1_700_000_000.0


def answer(**over: Any) -> dict[str, Any]:
    """An answer as daemon/explain.py makes one, for one address, with `over` replacing keys."""
    base: dict[str, Any] = {
        "query": "203.0.113.7",
        "known": True,
        "now": NOW,
        "since": NOW - 86400,
        "remembered": 12,
        "addresses": ["203.0.113.7"],
        "more_addresses": 0,
        "names": [],
        "refusals": [],
        "scans": [],
        "bans": [],
        "history": [],
        "past": [],
        "past_total": 0,
        "mode": "enforce",
        "verdicts": [],
        "silences": [],
    }
    return base | over


def verdict(why: str, detail: str, **more: Any) -> dict[str, Any]:
    return {"target": "203.0.113.7", "state": "not banned", "why": why, "detail": detail} | more


def fits(text: str) -> bool:
    lines = text.splitlines()
    return len(lines) <= SCREEN_LINES and all(len(line) <= SCREEN_WIDTH for line in lines)


def test_an_unknown_source_says_so_and_only_a_rule_about_it() -> None:
    """Never heard of: said first, with how much is remembered; an allowlist entry that
    would keep it from a ban is news, "0 of 10 refusals" is not."""
    text = render(
        answer(
            known=False,
            verdicts=[
                verdict("allowlisted", "allow entry 203.0.113.0/24"),
                verdict("below threshold", "0 of 10 verified refusals in the last 10 min"),
            ],
        )
    )
    assert text.splitlines()[0] == "203.0.113.7: never heard of it"
    assert "remembers 12 recent sources since" in text
    assert "if reported, not banned: allowlisted: allow entry 203.0.113.0/24" in text
    assert "below threshold" not in text


def test_a_repeat_offender_shows_its_count_length_log_and_next_ban() -> None:
    """A banned source: state, why, until, "3rd ban, 4 h", the lift command; the log with
    the earlier ban's count; for one not banned, how long a ban now would be."""
    ban = {"until": NOW + 4 * 3600, "lift": "wrapalert ban del 203.0.113.7"}
    past = [
        {"time": NOW, "action": "banned", "target": "203.0.113.7", "reason": "10 refusals",
         "until": NOW + 4 * 3600, "nth": 3},
        {"time": NOW - 9000, "action": "refused: session", "target": "203.0.113.7",
         "reason": "10 refusals", "until": None, "nth": 0},
    ]  # fmt: skip
    text = render(
        answer(
            verdicts=[
                {"target": "203.0.113.7", "state": "banned", "why": "10 refusals",
                 "detail": "3rd ban, 4 h", "ban": ban}
            ],
            history=[{"target": "203.0.113.7", "bans": 3, "first": NOW - 9e4, "last": NOW}],
            past=past,
            past_total=2,
        )
    )  # fmt: skip
    assert "203.0.113.7: BANNED: 10 refusals, until " in text
    assert "(3rd ban, 4 h)" in text
    assert "lift it: wrapalert ban del 203.0.113.7" in text
    assert "Bans within ban_memory: 3" in text
    assert "203.0.113.7 banned: 10 refusals (3rd ban, 4 h)" in text
    assert "203.0.113.7 refused: session (10 refusals)" in text
    later = render(
        answer(
            verdicts=[verdict("below threshold", "2 of 10", next_ban={"nth": 4, "seconds": 28800})]
        )
    )
    assert "a ban now would be its 4th, 8 h" in later


def test_a_long_reason_wraps_and_big_counts_stay_in_their_columns() -> None:
    """A verdict too long for one line puts its detail on the next; counts of millions
    keep the table within 80 columns."""
    row = {"daemon": "sshd", "trust": "trusted", "count": 12_345_678, "tcp": 12_000_000,
           "udp": 345_678, "unknown": 0, "first": NOW, "last": NOW, "addresses": 1}  # fmt: skip
    long = "x" * 70
    text = render(answer(refusals=[row], verdicts=[verdict("session", long)]))
    assert fits(text)
    assert f"  {long}" in text.splitlines()
    assert "12M" in text
    assert "345k" in text


def test_a_network_names_its_addresses_and_caps_its_verdicts() -> None:
    """A /24 of 40 addresses: three named and how many more; four verdicts and how many
    more; one screen."""
    addresses = [f"203.0.113.{i}" for i in range(40)]
    verdicts = [verdict("below threshold", "1 of 10") | {"target": a} for a in addresses[:10]]
    text = render(answer(query="203.0.113.0/24", addresses=addresses, verdicts=verdicts))
    assert text.splitlines()[0] == (
        "203.0.113.0/24: 40 address(es): 203.0.113.0, 203.0.113.1, 203.0.113.2, +37"
    )
    assert "  ... and 6 more" in text
    assert fits(text)


def test_attacker_text_cannot_reach_the_terminal_as_control_bytes() -> None:
    """Names, daemons, reasons, a silence's comment with ESC, BEL, C1 and bidi controls
    print as "?" each; nothing unprintable is left."""
    evil = "a\x1b[2J\x07\x9b\u202eb"
    row = {"daemon": evil, "trust": "trusted", "count": 1, "tcp": 1, "udp": 0, "unknown": 0,
           "first": NOW, "last": NOW, "addresses": 1}  # fmt: skip
    silence = {"id": 1, "matchers": [f"daemon={evil}"], "expires": NOW, "comment": evil}
    text = render(
        answer(
            names=[evil],
            refusals=[row],
            silences=[silence],
            verdicts=[verdict(evil, evil)],
        )
    )
    assert all(c.isprintable() for c in text.replace("\n", ""))
    assert "a?[2J???b" in text
