"""wrapalert.toml(5) is made from the parser's own definitions: the committed page is what
the generator makes, every key a parser reads is documented, and groff renders it cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import require

from wrapalert import config, manpage

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "packaging" / "man" / "wrapalert.toml.5"
SECTIONS = {section.heading: section for section in manpage.sections()}


def test_the_committed_page_is_what_the_generator_makes() -> None:
    """Regenerating gives the same bytes (python -m wrapalert.manpage > packaging/man/...)."""
    assert PAGE.read_text(encoding="utf-8") == manpage.render()


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_every_key_the_parser_reads_is_documented(heading: str) -> None:
    """The keys a table's parser reads (on an empty table, and given each documented
    example) are exactly the keys the page lists for it."""
    section = SECTIONS[heading]
    assert manpage.parser_keys(section) == set(section.keys)


def test_every_sink_type_has_its_section() -> None:
    """Each registered sink type has a [[sink]] section, so a new sink cannot be left out."""
    from wrapalert.sinks import registry  # noqa: PLC0415 - the registry loads every sink

    for sink in registry.all_types():
        assert f'[[sink]] type = "{sink.name}"' in SECTIONS


def test_a_key_missing_from_the_docs_is_caught() -> None:
    """The comparison is real: a table whose docs lack a key the parser reads differs."""
    section = SECTIONS["[daemon]"]
    docs = {k: v for k, v in section.keys.items() if k != "hostname"}
    assert manpage.parser_keys(section) != set(docs)


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
