"""helpers.require and the `system` marker, in a pytest run of their own (pytester) with
this suite's conftest: a test that asks for the system cannot go unmarked."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest

CONFTEST = Path(__file__).with_name("conftest.py").read_text()
INI = "[pytest]\naddopts = --strict-markers\nmarkers =\n    system: needs the system\n"


def inner(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    """Run `body` as a test file of its own, with this suite's conftest and marker."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_inner="import pytest\nfrom helpers import require\n\n" + body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def test_an_unmarked_test_that_asks_for_the_system_fails(pytester: pytest.Pytester) -> None:
    """require() fails a test without the marker, even when the part is there."""
    result = inner(pytester, "def test_x():\n    require(True, 'nft is missing')\n")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs the system (nft is missing) but is not marked*"])


def test_a_marked_test_runs_when_the_part_is_there(pytester: pytest.Pytester) -> None:
    """With the marker and the part present, the test runs."""
    body = "@pytest.mark.system\ndef test_x():\n    require(True, 'nft is missing')\n"
    inner(pytester, body).assert_outcomes(passed=1)


def test_a_marked_test_skips_when_the_part_is_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WRAPALERT_REQUIRE_SYSTEM a missing part skips the test, saying why."""
    monkeypatch.setattr(helpers, "REQUIRE_SYSTEM", False)
    body = "@pytest.mark.system\ndef test_x():\n    require(False, 'nft is missing')\n"
    result = inner(pytester, body)
    result.assert_outcomes(skipped=1)


def test_under_require_system_a_missing_part_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With WRAPALERT_REQUIRE_SYSTEM=1 (CI) a missing part is a failure, not a skip."""
    monkeypatch.setattr(helpers, "REQUIRE_SYSTEM", True)
    body = "@pytest.mark.system\ndef test_x():\n    require(False, 'nft is missing')\n"
    result = inner(pytester, body)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*WRAPALERT_REQUIRE_SYSTEM=1 but nft is missing*"])


def test_a_fixture_that_asks_fails_the_unmarked_tests_using_it(pytester: pytest.Pytester) -> None:
    """A fixture that starts a system part asks through require too: its unmarked user
    fails at setup, a marked one runs."""
    body = (
        "@pytest.fixture\ndef nft():\n    require(True, 'nft is missing')\n\n"
        "def test_unmarked(nft):\n    pass\n\n"
        "@pytest.mark.system\ndef test_marked(nft):\n    pass\n"
    )
    inner(pytester, body).assert_outcomes(passed=1, errors=1)


def test_a_file_wide_mark_counts(pytester: pytest.Pytester) -> None:
    """`pytestmark = pytest.mark.system` marks every test of the file."""
    body = "pytestmark = pytest.mark.system\n\ndef test_x():\n    require(True, 'nft is missing')\n"
    inner(pytester, body).assert_outcomes(passed=1)
