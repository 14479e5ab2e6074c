"""The HTML part: legible in a real browser engine, inert whatever the events say."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import chromium, elements

from wrapalert import config, story
from wrapalert.mail import Renderer
from wrapalert.model import Digest
from wrapalert.preview import build_digest, parse_events, sample_digest

NOW = 1_700_000_000.0
HOSTILE = "<img src=x onerror=alert(1)>"
BAR = (0xC0, 0x39, 0x2B)  # the chart's colour for trusted events


def html_part(d: Digest) -> str:
    part = Renderer("wrapalert@localhost", ("root",)).render(d).get_body(("html",))
    assert part is not None
    content: str = part.get_content()
    return content


def png_rows(data: bytes) -> list[bytes]:
    """Decode an 8-bit RGB(A) PNG into rows of RGB pixels (enough of PNG for a screenshot)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0)
    assert colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(px for j in range(0, stride, bpp) for px in line[j : j + 3]))
        prev = line
    return rows


def hostile_digest() -> Digest:
    """Markup in every event value a digest shows (daemon, address, name, labels) and the host.

    wire.parse rejects such bytes, so they are put in after it: the renderer must stand on
    its own, whatever reaches it.
    """
    d = build_digest(
        parse_events("d=sshd a=192.0.2.1 n=x.example count=3\nd=sshd a=192.0.2.2 uid=1000"),
        config.Config(),
        NOW,
        host="<b onmouseover=alert(3)>web1</b>",
    )
    first = replace(
        d.groups[0],
        addrs=((HOSTILE, 3),),
        labels=(("daemon", HOSTILE),),
        daemons=((HOSTILE, 3),),
        names=((HOSTILE, 3),),
    )
    return replace(d, groups=(first, *d.groups[1:]))


@pytest.mark.system
def test_screenshot_shows_the_timeline_chart(tmp_path: Path) -> None:
    """Chromium renders the sample digest as a non-blank page whose chart bars are visible."""
    shot = tmp_path / "digest.png"
    chromium(
        tmp_path,
        html_part(sample_digest(config.Config(), NOW)),
        f"--screenshot={shot}",
        "--window-size=900,1200",
    )
    rows = png_rows(shot.read_bytes())
    assert (len(rows), len(rows[0]) // 3) == (1200, 900)
    colours = {row[i : i + 3] for row in rows[::8] for i in range(0, len(row), 24)}
    assert len(colours) > 10  # text, header, table rules, bars: not one flat colour
    bar = bytes(BAR)
    widest = max(sum(row[i : i + 3] == bar for i in range(0, len(row), 3)) for row in rows)
    assert widest >= 100  # the busiest bar spans over 100 pixels


@pytest.mark.system
def test_dom_holds_no_markup_from_events(tmp_path: Path) -> None:
    """Markup in event values and the host name is text in Chromium's DOM, never an element."""
    result = chromium(tmp_path, html_part(hostile_digest()), "--dump-dom")
    dom = elements(result.stdout.decode("utf-8"))
    assert dom.tags.isdisjoint({"img", "script", "b", "iframe", "object", "embed"})
    assert not [name for name in dom.attrs if name.startswith("on")]
    assert "".join(dom.text).count(HOSTILE) >= 4  # shown, as text: daemon, address, name, ...


def test_html_loads_nothing_and_runs_nothing() -> None:
    """The HTML part has no scripts, no remote or embedded resources and no <style> to drop."""
    dom = elements(html_part(sample_digest(config.Config(), NOW)))
    banned = {"script", "img", "link", "style", "iframe", "object", "embed", "svg", "video"}
    assert dom.tags.isdisjoint(banned)
    assert dom.attrs.isdisjoint({"src", "href", "srcset", "background"})
    assert not [v for v in dom.values if "url(" in v or "http" in v]


def test_html_has_what_the_text_part_has() -> None:
    """Every story, source, silence command and untrusted report of the text part is in the
    HTML."""
    d = sample_digest(config.Config(), NOW)
    msg = Renderer("wrapalert@localhost", ("root",)).render(d)
    plain = msg.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    shown = " ".join("".join(elements(html_part(d)).text).split())
    needles = [
        "203.0.113.7",
        "2001:db8::66",
        "scanner.exa",  # the text part cuts names to its column
        "198.51.100.0/24: 16 addresses",
        "wrapalert silence add --for 2h client=203.0.113.7",
        "wrapalert silence add --for 2h daemon=sshd client=192.0.2.200",
        *(s.line[:60] for s in story.stories(d, story.StoryRule(), d.window[0])),
        "reported by uid 1000, untrusted: 1 event,",
        "Refused connections per 2 min",
    ]
    for needle in needles:
        assert needle in text
        assert needle in shown


def test_html_names_the_command_for_the_busiest_source() -> None:
    """The HTML part, like the text part, says how to silence the busiest source even when
    no story carries a command, and escapes it (quotes are attacker-adjacent text)."""
    events = parse_events("d=sshd a=192.0.2.1 count=2\nd=vsftpd a=192.0.2.9 count=3")
    page = html_part(build_digest(events, config.Config(), NOW, host="web1"))
    assert "To silence the busiest source for 2h:" in page
    assert "wrapalert silence add --for 2h daemon=vsftpd client=192.0.2.9" in page
