"""elflink: a service's program found by name, and whether it loads libwrap, read from its
ELF dynamic section in pure Python (as readelf reads it), bounded against damaged files."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import require

from wrapalert import elflink

BASE = 0x400000


def make_elf(path: Path, needed: list[str], *, wide: bool = True, order: str = "<") -> Path:
    """A minimal dynamic ELF: a header, PT_LOAD over the file, PT_DYNAMIC with DT_NEEDED
    entries into a string table that only the loaded segment maps."""
    head_size, ph_size = (64, 56) if wide else (52, 32)
    dyn = struct.Struct(order + ("qQ" if wide else "iI"))
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    names, at = [], 1
    for n in needed:
        names.append(at)
        at += len(n) + 1
    str_off = head_size + 2 * ph_size
    dyn_off = str_off + len(strtab)
    entries = [(1, off) for off in names] + [(5, BASE + str_off), (0, 0)]
    dynamic = b"".join(dyn.pack(tag, value) for tag, value in entries)
    size = dyn_off + len(dynamic)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = struct.pack(
            order + "HHIQQQIHHHHHH", 3, 62, 1, 0, head_size, 0, 0, 64, 56, 2, 64, 0, 0
        )
        load = struct.pack(order + "IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
        dyn_ph = struct.pack(
            order + "IIQQQQQQ", 2, 6, dyn_off, BASE + dyn_off, 0, len(dynamic), len(dynamic), 8
        )
    else:
        header = struct.pack(
            order + "HHIIIIIHHHHHH", 3, 3, 1, 0, head_size, 0, 0, 52, 32, 2, 40, 0, 0
        )
        load = struct.pack(order + "IIIIIIII", 1, 0, BASE, BASE, size, size, 5, 0x1000)
        dyn_ph = struct.pack(
            order + "IIIIIIII", 2, dyn_off, BASE + dyn_off, 0, len(dynamic), len(dynamic), 6, 4
        )
    path.write_bytes(ident + header + load + dyn_ph + strtab + dynamic)
    return path


@pytest.mark.parametrize(("wide", "order"), [(True, "<"), (True, ">"), (False, "<"), (False, ">")])
def test_needed_reads_every_class_and_byte_order(
    tmp_path: Path,
    wide: bool,  # noqa: FBT001 - a parameter
    order: str,
) -> None:
    path = make_elf(tmp_path / "prog", ["libwrap.so.0", "libc.so.6"], wide=wide, order=order)
    assert elflink.needed(path) == ["libwrap.so.0", "libc.so.6"]


@pytest.mark.system
@pytest.mark.parametrize(
    "program",
    ["/usr/sbin/sshd", "/usr/sbin/tcpd", "/usr/bin/python3", "/bin/true", "/usr/bin/logger"],
)
def test_needed_is_what_readelf_lists(program: str) -> None:
    """The system's own programs, against binutils' reading of the same dynamic section."""
    require(shutil.which("readelf") is not None, "readelf is missing (apt-get install binutils)")
    require(Path(program).exists(), f"{program} is missing")
    out = subprocess.run(
        ["readelf", "-d", "-W", program], capture_output=True, text=True, check=True
    ).stdout
    assert elflink.needed(Path(program)) == re.findall(
        r"\(NEEDED\)\s+Shared library: \[(.*?)\]", out
    )


@pytest.mark.system
def test_sshd_and_tcpd_link_libwrap_and_true_does_not() -> None:
    """Debian's sshd program (bookworm: /usr/sbin/sshd; trixie: the sshd-session it runs
    per connection, which asks libwrap) and tcpd load libwrap.so.0; /bin/true loads libc
    only: proven False."""
    require(Path("/usr/sbin/tcpd").exists(), "tcpd is missing (apt-get install tcpd)")
    require(Path("/usr/sbin/sshd").exists(), "sshd is missing (apt-get install openssh-server)")
    sshd = elflink.binary("sshd")
    assert sshd is not None
    assert elflink.linkage(Path("/usr/sbin/tcpd")) is True
    assert elflink.linkage(sshd) is True, sshd
    assert elflink.linkage(Path("/bin/true")) is False


def test_libwrap_through_a_library_counts(tmp_path: Path) -> None:
    """A program whose own library loads libwrap asks it all the same."""
    libs = tmp_path / "lib"
    libs.mkdir()
    make_elf(libs / "libguard.so.1", ["libwrap.so.0"])
    make_elf(libs / "libplain.so.1", [])
    prog = make_elf(tmp_path / "prog", ["libplain.so.1", "libguard.so.1"])
    assert elflink.linkage(prog, [str(libs)]) is True
    plain = make_elf(tmp_path / "plain", ["libplain.so.1"])
    assert elflink.linkage(plain, [str(libs)]) is False


def test_a_library_that_cannot_be_found_or_read_tells_nothing(tmp_path: Path) -> None:
    """Not proven either way: None, never False."""
    libs = tmp_path / "lib"
    libs.mkdir()
    (libs / "libdamaged.so.1").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(20))
    assert elflink.linkage(make_elf(tmp_path / "a", ["libgone.so.1"]), [str(libs)]) is None
    assert elflink.linkage(make_elf(tmp_path / "b", ["libdamaged.so.1"]), [str(libs)]) is None


def test_a_static_program_loads_nothing(tmp_path: Path) -> None:
    """No PT_DYNAMIC: no library at all, so no libwrap."""
    path = make_elf(tmp_path / "prog", [])
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 64 + 56, 4)  # the second program header becomes PT_NOTE
    path.write_bytes(bytes(data))
    assert elflink.needed(path) == []
    assert elflink.linkage(path, []) is False


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:40],  # truncated in the header
        lambda d: d[:200],  # truncated in the dynamic section
        lambda d: d[:56] + struct.pack("<H", 0xFFFF) + d[58:],  # 65535 program headers
        lambda d: b"#!/bin/sh\n" + d,  # a script
        lambda d: d[:4] + b"\x09" + d[5:],  # an unknown class
    ],
)
def test_a_damaged_file_is_an_elf_error(tmp_path: Path, damage: object) -> None:
    path = make_elf(tmp_path / "prog", ["libwrap.so.0"])
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(elflink.ElfError):
        elflink.needed(path)
    assert elflink.linkage(path, []) is None


def test_a_name_past_its_bound_is_an_elf_error(tmp_path: Path) -> None:
    """A library name longer than MAX_NAME is never read whole: no terminator in reach."""
    path = make_elf(tmp_path / "prog", ["x" * (elflink.MAX_NAME + 1)])
    with pytest.raises(elflink.ElfError):
        elflink.needed(path)


def test_a_service_is_found_in_the_bin_dirs_and_an_inetd_one_through_tcpd(tmp_path: Path) -> None:
    """By name in the PATH-like dirs; a service inetd.conf runs through tcpd is tcpd's (it
    is the one that asks libwrap); names that are no file name are never looked up."""
    sbin, bin_ = tmp_path / "sbin", tmp_path / "bin"
    sbin.mkdir()
    bin_.mkdir()
    (bin_ / "vsftpd").write_bytes(b"")
    (sbin / "tcpd").write_bytes(b"")
    (sbin / "in.fingerd").write_bytes(b"")
    conf = tmp_path / "inetd.conf"
    conf.write_text(
        "#finger stream tcp nowait root /usr/sbin/tcpd in.talkd\n"
        "finger stream tcp nowait nobody /usr/sbin/tcpd /usr/sbin/in.fingerd -w\n"
        "discard stream tcp nowait root internal\n"
    )
    dirs = (str(sbin), str(bin_))
    assert elflink.binary("vsftpd", bin_dirs=dirs, inetd_conf=str(conf)) == bin_ / "vsftpd"
    assert elflink.binary("in.fingerd", bin_dirs=dirs, inetd_conf=str(conf)) == sbin / "tcpd"
    assert elflink.binary("in.talkd", bin_dirs=dirs, inetd_conf=str(conf)) is None
    for name in ("../bin/vsftpd", "..", "a/b", "", "x" * 100, "sshd\n"):
        assert elflink.binary(name, bin_dirs=dirs, inetd_conf=str(conf)) is None
