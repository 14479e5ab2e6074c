"""The story classifiers: pure functions of group reports and `[story]`/`[scan]` numbers."""

from __future__ import annotations

from dataclasses import replace

from helpers import group_report

from wrapalert.model import Digest, GroupReport
from wrapalert.scanrule import ScanRule, ScanSignal
from wrapalert.story import StoryRule, held_story, stories

T = 1_700_000_000.0
RULE = ScanRule(600.0, 3, 16)


def told(*groups: GroupReport, rule: StoryRule | None = None, **digest: int) -> list[str]:
    """The lead block's lines, kind first."""
    d = Digest("web1", T + 120, groups, **digest)  # type: ignore[arg-type]
    return [f"{s.kind}: {s.line}" for s in stories(d, rule or StoryRule(), T)]


def signal(kind: str, target: str, sources: int, *daemons: str) -> tuple[str, ...]:
    return ScanSignal(kind, target, daemons, sources, T, T + 60).as_tuple()


def test_a_scan_is_what_the_detector_signalled_not_a_count_of_daemons() -> None:
    """Five daemons from one address are a scan only with the detector's signal in a group."""
    groups = [
        group_report(d, "192.0.2.9") for d in ("sshd", "ftpd", "telnetd", "rpcbind", "fingerd")
    ]
    assert told(*groups) == [
        "probes: 1 other new address, 5 refused: fingerd, ftpd, rpcbind, sshd, telnetd"
    ]
    marked = replace(
        groups[0], scan=(signal("daemons", "192.0.2.9", 1, "ftpd", "sshd", "telnetd"),)
    )
    assert told(marked, *groups[1:]) == [
        "scan: 192.0.2.9 tried 5 daemons, 5 refused: fingerd, ftpd, rpcbind, sshd, telnetd"
    ]


def test_a_sweep_claims_every_address_of_its_network() -> None:
    """A sweep signal for a /24 tells its addresses' events; none of them is a probe too."""
    groups = [group_report(addr=f"198.51.100.{i}") for i in range(4)]
    groups[0] = replace(groups[0], scan=(signal("sweep", "198.51.100.0/24", 4, "sshd"),))
    assert told(*groups, group_report(addr="192.0.2.1")) == [
        "sweep: 198.51.100.0/24: 4 addresses, 4 refused: sshd",
        "probes: 1 other new address, 1 refused: sshd",
    ]


def test_brute_force_follows_the_threshold() -> None:
    """`brute_force` refusals of one address by one daemon are a brute force; one fewer is not."""
    assert told(group_report(addr="203.0.113.5", events=20)) == [
        "brute force: 203.0.113.5 on sshd: 20 refused"
    ]
    assert told(group_report(addr="203.0.113.5", events=20), rule=StoryRule(brute_force=21)) == [
        "probes: 1 other new address, 20 refused: sshd"
    ]


def test_an_address_is_told_once_by_its_most_severe_story() -> None:
    """A scanner that also hammers sshd is told as the scan, not as a brute force or a probe."""
    hammer = group_report(
        "sshd", "192.0.2.9", 50, scan=(signal("daemons", "192.0.2.9", 1, "a", "b"),)
    )
    assert [line.split(":")[0] for line in told(hammer, group_report("ftpd", "192.0.2.9"))] == [
        "scan"
    ]


def test_repeat_and_persistent_offenders_follow_the_persistent_age() -> None:
    """A reported group back within `persistent` is a repeat; one known longer, persistent."""
    back = group_report(addr="192.0.2.50", reason="new activity", total=9, group_first_seen=T - 600)
    assert told(back) == ["repeat: 192.0.2.50 repeat, 1 refused: sshd"]
    assert told(back, rule=StoryRule(persistent=300.0)) == [
        "repeat: 192.0.2.50 persistent, 1 refused: sshd"
    ]


def test_untrusted_story_is_counts_and_uids_only() -> None:
    """Untrusted reports make one story of their count and uids: none of their text."""
    forged = group_report("CRITICAL:root-compromise", "10.6.6.6", 40, trusted=False, uid=65534)
    assert told(group_report(addr="192.0.2.1"), forged) == [
        "probes: 1 other new address, 1 refused: sshd",
        "untrusted: 40 untrusted reports from uid 65534, see below",
    ]


def test_held_and_silenced_are_stories_last() -> None:
    """What the mail cap held back and what silences kept out close the lead block."""
    assert told(group_report(addr="192.0.2.1"), held=7, merged=3, silenced=1)[1:] == [
        "held: 7 events held back by the rate limit, sent late (3 digests merged)",
        "silenced: 1 event silenced since the last digest, not listed",
    ]


def held(clients: dict[str, int], daemons: dict[str, int], **more: object) -> dict[str, object]:
    events = sum(clients.values())
    return {"type": "held", "events": events, "first": T, "last": T + 60,
            "clients": clients, "daemons": daemons, "other_clients": 0, **more}  # fmt: skip


def test_held_record_stories_use_the_scan_and_brute_force_numbers() -> None:
    """A held record is a scan, a brute force or a sweep by the same numbers, else nothing."""
    assert held_story(held({"192.0.2.9": 3}, {"a": 1, "b": 1, "c": 1}), RULE, 20) == (
        "scan from 192.0.2.9 (3 daemons)"
    )
    assert held_story(held({"192.0.2.9": 20}, {"sshd": 20}), RULE, 20) == (
        "brute force from 192.0.2.9 on sshd (20 tries)"
    )
    sweep = {f"198.51.100.{i}": 1 for i in range(16)}
    assert (
        held_story(held(sweep, {"sshd": 16}), RULE, 20) == "sweep of 198.51.100.0/24 (16 addresses)"
    )
    assert held_story(held({"192.0.2.9": 19}, {"sshd": 19}), RULE, 20) == ""
    assert held_story(held(sweep, {"sshd": 16}, last=T + 601), RULE, 20) == ""  # past the window


def test_untrusted_held_records_tell_no_story() -> None:
    """A held record of untrusted reports names nothing: its values are the sender's choice."""
    assert held_story(held({"192.0.2.9": 90}, {"sshd": 90}, trusted=False), RULE, 20) == ""
