"""wrapalert.toml(5) is made from the parser's own definitions: the committed page is what
the generator makes, every table and every key is on it, and groff renders it cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import require

from wrapalert import config, manpage
from wrapalert.confparse import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "packaging" / "man" / "wrapalert.toml.5"
SECTIONS = {section.heading: section for section in manpage.sections()}


def test_the_committed_page_is_what_the_generator_makes() -> None:
    """Regenerating gives the same bytes (python -m wrapalert.manpage > packaging/man/...)."""
    assert PAGE.read_text(encoding="utf-8") == manpage.render()


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_every_section_has_words_for_itself_and_each_key(heading: str) -> None:
    """A table's intro (its dataclass's docstring) and each key's text are sentences."""
    section = SECTIONS[heading]
    assert section.intro.endswith(".")
    assert section.keys
    for key in section.keys:
        assert key.setting.text.endswith("."), key.name


def test_every_table_of_the_file_has_its_section() -> None:
    """Each table the parser takes ([daemon], ..., [[route]]) is on the page."""
    headings = {f"[{name}]" for name in config.TABLES} | {"[[route]]"}
    assert headings <= set(SECTIONS)


def test_every_sink_type_has_its_section() -> None:
    """Each registered sink type has a [[sink]] section, so a new sink cannot be left out."""
    from wrapalert.sinks import registry  # noqa: PLC0415 - the registry loads every sink

    for sink in registry.all_types():
        assert f'[[sink]] type = "{sink.name}"' in SECTIONS


def test_a_field_that_is_no_key_is_neither_read_nor_listed() -> None:
    """The nftables sink's events_per_second is a field but no key (no rate limit stands
    before the ban stage): the parser refuses it and the page leaves it out."""
    section = SECTIONS['[[sink]] type = "nftables"']
    assert "events_per_second" not in {key.name for key in section.keys}
    with pytest.raises(ConfigError, match="events_per_second: unknown key"):
        config.loads('[[sink]]\ntype = "nftables"\nevents_per_second = 5\n')


def test_the_pages_example_is_a_valid_config() -> None:
    """The EXAMPLE section parses, with the keys it shows."""
    cfg = config.loads(manpage.EXAMPLE)
    assert cfg.daemon.hostname == "web1"
    assert cfg.metrics.textfile == Path("/var/lib/prometheus/node-exporter/wrapalert.prom")


@pytest.mark.system
def test_the_page_renders_without_warnings() -> None:
    """groff renders wrapalert.toml(5) with every warning enabled and says nothing."""
    groff = shutil.which("groff")
    require(groff is not None, "groff not found (apt-get install groff-base)")
    assert groff is not None
    done = subprocess.run(
        [groff, "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stderr == ""
