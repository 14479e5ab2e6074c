"""The match language, group fields and severities: one module, below config and pipeline."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import event

from wrapalert import config
from wrapalert.match import (
    FIELDS,
    SEVERITIES,
    Matcher,
    MatcherError,
    Selector,
    highest,
    severity_rank,
)


def test_selector_takes_matchers_and_trust() -> None:
    """A route's match list: every matcher and the sender's trust must match."""
    selector = Selector.parse(["daemon=sshd", "client=10.0.0.0/8", "trust=untrusted"])
    assert selector.trust is False
    assert [str(m) for m in selector.matchers] == ["daemon=sshd", "client_addr=10.0.0.0/8"]
    assert selector.matches(event(addr="10.1.2.3", trusted=False))
    assert not selector.matches(event(addr="10.1.2.3"))
    assert not selector.matches(event(addr="192.0.2.1", trusted=False))
    assert Selector.parse([]).matches(event(trusted=False))  # empty: everything


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["trust=maybe"], "'trust=maybe': use trust=trusted or trust=untrusted"),
        (["trust=trusted", "password=x"], "'password=x': unknown field"),
    ],
)
def test_selector_names_the_bad_text(texts: list[str], message: str) -> None:
    """A bad entry of a match list is refused with the entry and the reason."""
    with pytest.raises(MatcherError, match=message):
        Selector.parse(texts)


def test_silences_take_no_trust() -> None:
    """trust= is for routes only: a silence matcher naming it is an unknown field."""
    with pytest.raises(MatcherError, match="unknown field"):
        Matcher.parse("trust=trusted")


def test_severities_are_ranked_lowest_first() -> None:
    """info < warning < critical; the highest of none is the lowest."""
    assert SEVERITIES == ("info", "warning", "critical")
    assert [severity_rank(s) for s in SEVERITIES] == [0, 1, 2]
    assert highest(["warning", "critical", "info"]) == "critical"
    assert highest([]) == "info"
    with pytest.raises(ValueError, match="urgent"):
        severity_rank("urgent")


@pytest.mark.parametrize("field", FIELDS)
def test_group_by_and_matchers_take_the_same_fields(field: str) -> None:
    """Every field a matcher names is a group_by field, from the one list."""
    assert Matcher.parse(f"{field}=192.0.2.1").field == field
    cfg = config.loads(f'[digest]\ngroup_by = ["{field}"]\n')
    assert cfg.digest.group_by == (field,)


def imported_by(module: str, then: str = "", prefix: str = "wrapalert") -> set[str]:
    """The modules (named from `prefix`) a fresh interpreter loads to import `module` and
    run `then`."""
    code = (
        f"import sys, {module}; {then or 'pass'}; "
        f"print(*sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    return set(out.stdout.split())


def test_config_imports_neither_pipeline_nor_daemon() -> None:
    """config sits below the pipeline: the rules it validates with live below both."""
    loaded = imported_by("wrapalert.config")
    assert not {m for m in loaded if m.startswith(("wrapalert.pipeline", "wrapalert.daemon"))}


SENDING = ("jinja2", "aiosmtplib", "structlog")


@pytest.mark.parametrize(
    "then",
    [
        "",
        "wrapalert.config.loads('')",
        'wrapalert.config.loads(\'[[sink]]\\ntype = "maildir"\\n[[route]]\\nseverity = "info"\')',
    ],
)
def test_parsing_a_config_loads_nothing_that_sends(then: str) -> None:
    """Importing config, and parsing a file whose sinks send mail, loads none of the
    libraries that render, send or log (jinja2, aiosmtplib, structlog): a config is read
    by every command (check-config, hosts-deny-line, status), and only the daemon sends."""
    loaded = {m.split(".")[0] for m in imported_by("wrapalert.config", then, prefix="")}
    assert not loaded & set(SENDING)


def test_the_rule_modules_import_nothing_above_them() -> None:
    """match imports nothing of ours; scanrule only the network arithmetic."""
    assert imported_by("wrapalert.match") == {"wrapalert", "wrapalert.match"}
    assert imported_by("wrapalert.scanrule") == {
        "wrapalert",
        "wrapalert.netaddr",
        "wrapalert.scanrule",
    }
