"""User templates: they override ours file by file, and a broken one never costs a mail."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import jinja2
from helpers import preview_digest
from structlog.testing import capture_logs

from wrapalert.mail import Renderer, _Templates

NOW = 1_700_000_000.0
BUILTIN_SUBJECT = "[wrapalert] web1: 3 refused from 1 source (1 new): sshd"


def render_with(templates: Path) -> tuple[str, str, list[MutableMapping[str, Any]]]:
    """Subject and text part rendered with `templates` as template_dir, and the log entries."""
    with capture_logs() as logs:
        msg = Renderer("wrapalert@localhost", ("root",), templates).render(
            preview_digest("d=sshd a=192.0.2.1 count=3")
        )
    plain = msg.get_body(("plain",))
    assert plain is not None
    return msg["Subject"], plain.get_content(), logs


def failures(logs: list[MutableMapping[str, Any]]) -> list[tuple[object, object]]:
    return [(e["template"], e["log_level"]) for e in logs if e["event"] == "template_failed"]


def test_user_template_overrides_only_its_own_file(tmp_path: Path) -> None:
    """A subject.j2 in template_dir replaces our subject; the other parts stay ours."""
    (tmp_path / "subject.j2").write_text("ALERT {{ host }} {{ events }}")
    subject, text, logs = render_with(tmp_path)
    assert subject == "ALERT web1 3"
    assert text.startswith("wrapalert on web1: 3 refused connections")
    assert failures(logs) == []


def test_user_template_can_include_ours(tmp_path: Path) -> None:
    """A user template may include the built-in one as builtin/NAME and add to it."""
    (tmp_path / "mail.txt.j2").write_text(
        '{% include "builtin/mail.txt.j2" %}Call the on-duty admin: 555-0100\n'
    )
    _, text, _ = render_with(tmp_path)
    assert text.startswith("wrapalert on web1: 3 refused connections")
    assert text.endswith("Call the on-duty admin: 555-0100\n")


def test_missing_template_dir_is_logged_and_ours_are_used(tmp_path: Path) -> None:
    """A template_dir that does not exist is logged as an error; the mail uses our templates."""
    subject, _, logs = render_with(tmp_path / "absent")
    assert subject == BUILTIN_SUBJECT
    assert [e["event"] for e in logs] == ["template_dir_missing"]


def test_syntax_error_falls_back_with_a_logged_error(tmp_path: Path) -> None:
    """A user template that does not parse is logged, and ours renders that part."""
    (tmp_path / "subject.j2").write_text("{% if %}broken")
    subject, _, logs = render_with(tmp_path)
    assert subject == BUILTIN_SUBJECT
    assert failures(logs) == [("subject.j2", "error")]
    assert "TemplateSyntaxError" in str(logs[0]["error"])


def test_runtime_error_falls_back_with_a_logged_error(tmp_path: Path) -> None:
    """A user template that raises while rendering is logged, and ours renders that part."""
    (tmp_path / "mail.txt.j2").write_text("{{ events // 0 }}")
    _, text, logs = render_with(tmp_path)
    assert text.startswith("wrapalert on web1: 3 refused connections")
    assert failures(logs) == [("mail.txt.j2", "error")]
    assert "ZeroDivisionError" in str(logs[0]["error"])


def test_undefined_variable_falls_back_with_a_logged_error(tmp_path: Path) -> None:
    """A user template naming a variable that does not exist is logged; ours renders that part."""
    (tmp_path / "mail.html.j2").write_text("<p>{{ no_such_thing }}</p>")
    with capture_logs() as logs:
        msg = Renderer("a@b", ("root",), tmp_path).render(
            preview_digest("d=sshd a=192.0.2.1 count=3")
        )
    html = msg.get_body(("html",))
    assert html is not None
    assert ">Sources</h2>" in html.get_content()
    assert failures(logs) == [("mail.html.j2", "error")]
    assert "UndefinedError" in str(logs[0]["error"])


def test_user_templates_run_in_the_sandbox(tmp_path: Path) -> None:
    """A user template cannot reach Python internals: the attempt is logged and ours is used."""
    (tmp_path / "subject.j2").write_text("{{ host.__class__.__mro__[1].__subclasses__() }}")
    subject, _, logs = render_with(tmp_path)
    assert subject == BUILTIN_SUBJECT
    assert "SecurityError" in str(logs[0]["error"])


def test_mail_goes_out_even_when_our_templates_are_gone(tmp_path: Path) -> None:
    """Without any template (say, a broken install) the mail still carries the counts."""
    renderer = Renderer("a@b", ("root",))
    renderer.builtin = _Templates(jinja2.FileSystemLoader(str(tmp_path)))
    with capture_logs() as logs:
        msg = renderer.render(preview_digest("d=sshd a=192.0.2.1 count=3"))
    plain = msg.get_body(("plain",))
    assert plain is not None
    assert "3 refused from 1 sources" in plain.get_content()
    assert msg["X-Wrapalert-Events"] == "3"
    assert len(failures(logs)) == 3
