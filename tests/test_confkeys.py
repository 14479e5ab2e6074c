"""A config key written once: its field's setting drives the parser (type, range, unknown
keys, what the value becomes) and the man page (its words, its default)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrapalert import manpage
from wrapalert.confkeys import (
    POSITIVE,
    Count,
    Duration,
    Flag,
    PathValue,
    Rate,
    Strings,
    Text,
    keys,
    read,
    required,
    setting,
)
from wrapalert.confparse import ConfigError, Table
from wrapalert.match import IPNetwork


def _networks(texts: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


@dataclass(frozen=True)
class Sample:
    """A table made up for these tests."""

    url: str = required("Where it goes.", Text(), missing="name a URL")
    count: int = setting(3, "How many.", Count(minimum=1, maximum=9))
    wait: float = setting(10.0, "How long.", Duration())
    grace: float = setting(0.5, "How long at most.", POSITIVE)
    rate: float = setting(100.0, "How fast.", Rate())
    nets: tuple[IPNetwork, ...] = setting((), "Which networks.", Strings(), check=_networks)
    sender: str = setting("root", "Who sends.", Text(), key="from")
    home: Path | None = setting(None, "Where it lives.", PathValue(), shown="unset: nowhere")
    loud: bool = setting(False, "Whether it shouts.", Flag())
    scratch: int = 0  # not a key


class Locator:
    def error(self, table: str, _index: int | None, key: str, problem: str) -> ConfigError:
        return ConfigError(f"[{table}] {key}: {problem}")


def parse(**raw: object) -> Sample:
    t = Table(Locator(), "sample", None, dict(raw))
    cfg = read(t, Sample)
    t.done()
    return cfg


def problem(**raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse(**raw)
    return str(info.value)


def test_the_settings_fill_the_dataclass_with_typed_values() -> None:
    """Each key is read into its field, as its kind and check make it: seconds from a
    duration, networks from CIDR text, a float from an integer rate, the TOML name `from`
    into the field `sender`."""
    cfg = parse(
        url="u", count=9, wait="1h30m", rate=5, nets=["10.0.0.0/8"], home="/srv", **{"from": "a"}
    )
    assert cfg == Sample(
        url="u",
        count=9,
        wait=5400.0,
        rate=5.0,
        nets=(ipaddress.IPv4Network("10.0.0.0/8"),),
        sender="a",
        home=Path("/srv"),
    )
    assert isinstance(cfg.rate, float)


def test_absent_keys_keep_their_defaults() -> None:
    """A table with only the required key gives the dataclass's own defaults."""
    assert parse(url="u") == Sample(url="u")


def test_a_required_key_left_out_is_refused_with_its_hint() -> None:
    assert problem(count=2) == "[sample] url: missing; name a URL"


def test_an_unknown_key_is_refused() -> None:
    """Only the fields made by `setting` are keys: a field without one is unknown too."""
    assert problem(url="u", colour="red") == "[sample] colour: unknown key"
    assert problem(url="u", scratch=1) == "[sample] scratch: unknown key"
    assert problem(url="u", sender="a") == "[sample] sender: unknown key"  # its key is `from`


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"count": "3"}, "[sample] count: expected integer, got string"),
        ({"count": True}, "[sample] count: expected integer, got boolean"),
        ({"loud": 1}, "[sample] loud: expected boolean, got integer"),
        ({"nets": "10.0.0.0/8"}, "[sample] nets: expected array, got string"),
        ({"wait": [1]}, "[sample] wait: expected integer or float or string, got array"),
    ],
)
def test_a_wrong_type_is_refused_by_name(raw: dict[str, object], message: str) -> None:
    assert problem(url="u", **raw) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"count": 0}, "[sample] count: 0 is out of range 1..9"),
        ({"count": 10}, "[sample] count: 10 is out of range 1..9"),
        ({"grace": "0s"}, "[sample] grace: must be more than 0"),
        ({"rate": 0}, "[sample] rate: 0 is out of range (0, 1000000]"),
        ({"wait": "soon"}, '[sample] wait: bad duration \'soon\' (use "500ms", "10s", "5m", '),
        ({"home": "srv"}, "[sample] home: 'srv' must be an absolute path"),
        ({"nets": ["ten"]}, "[sample] nets: 'ten' does not appear to be an IPv4 or IPv6"),
    ],
)
def test_a_value_out_of_range_is_refused_with_the_reason(
    raw: dict[str, object], message: str
) -> None:
    """The kind's range, and a check's ValueError, name the key and the problem."""
    assert problem(url="u", **raw).startswith(message)


def test_a_duration_bound_is_worded_in_its_own_unit() -> None:
    """`at least` bounds read as durations; a reason is given after the problem."""
    kind = Duration(minimum=1.0)
    with pytest.raises(ValueError, match="must be at least 1s"):
        kind.convert("500ms")
    why = Duration(inclusive=False, why="0 would fail every attempt")
    with pytest.raises(ValueError, match=r"must be more than 0 \(0 would fail every attempt\)"):
        why.convert(0)


def test_the_man_page_shows_each_keys_words_and_default() -> None:
    """The same settings make the page: every key, in field order, with its words and its
    default written as the file would hold it (a duration as one, a path quoted, the
    setting's own words where it gives them); a field that is no key is left out."""
    assert [k.name for k in keys(Sample)] == [
        "url",
        "count",
        "wait",
        "grace",
        "rate",
        "nets",
        "from",
        "home",
        "loud",
    ]
    section = manpage.Section("[sample]", "A table.", keys(Sample))
    body = "\n".join(manpage.section_body(section))
    for line in (
        ".B url\nWhere it goes. Default: none: required.",
        ".B count\nHow many. Default: 3.",
        '.B wait\nHow long. Default: "10s".',
        '.B grace\nHow long at most. Default: "500ms".',
        ".B rate\nHow fast. Default: 100.",
        ".B nets\nWhich networks. Default: [].",
        '.B from\nWho sends. Default: "root".',
        ".B home\nWhere it lives. Default: unset: nowhere.",
        ".B loud\nWhether it shouts. Default: false.",
    ):
        assert f".TP\n{line}" in body
    assert "scratch" not in body
