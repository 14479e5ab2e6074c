"""Does a service still link libwrap? Its binary found by name, its ELF read in pure Python.

A service that stops linking libwrap (a rebuild without TCP wrappers, a
package from elsewhere) stops reading hosts.deny: its refusals never run the
hook. The hook watch asks once a day about each service that reported in the
last 30 days (daemon/hookwatch.py), and raises the alarm only when it saw the
same service link libwrap before: only what it can prove.

* `binary(daemon)`: the program libwrap runs in for that daemon name: on
  trixie, `sshd` asks in /usr/lib/openssh/sshd-session; an inetd service that
  /etc/inetd.conf runs through tcpd is tcpd's; else the name in /usr/sbin,
  /usr/bin, /sbin, /bin (and /usr/local's). None when there is no such file.
* `linkage(path)`: whether libwrap.so.0 is among the libraries it loads: its
  DT_NEEDED entries (the dynamic section, found through the program headers,
  its string table through the PT_LOAD that maps it), then theirs, found in
  the system's library directories. `True`, `False` only when every library
  was found and read, else None (cannot tell).

Every read is bounded (header sizes, entries, string lengths, libraries
followed): a damaged or hostile file gives None, never an exception.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LIBWRAP = "libwrap.so.0"
SSHD_SESSION = "/usr/lib/openssh/sshd-session"  # trixie: where sshd asks libwrap
TCPD = "tcpd"
BIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
LIB_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
INETD_CONF = "/etc/inetd.conf"
MAX_PHNUM = 512  # program headers read at most
MAX_DYNAMIC = 4096  # dynamic entries read at most
MAX_NAME = 4096  # bytes of one library name
MAX_LIBRARIES = 256  # libraries followed at most
_NAME = re.compile(r"[A-Za-z0-9._+-]{1,64}")  # a daemon name that can be a file name
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


class ElfError(ValueError):
    """Not an ELF file this reader can follow (or a damaged one)."""


@dataclass(frozen=True)
class _Layout:
    """What differs between ELF classes and byte orders."""

    order: str  # "<" or ">"
    header: struct.Struct  # e_phoff, e_phentsize, e_phnum from the header's tail
    program: struct.Struct  # one program header, in the class's field order
    dynamic: struct.Struct  # one dynamic entry: tag, value
    wide: bool  # ELFCLASS64


def _layout(ident: bytes) -> _Layout:
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    wide = {1: False, 2: True}.get(ident[4])
    order = {1: "<", 2: ">"}.get(ident[5])
    if wide is None or order is None:
        raise ElfError("unknown ELF class or byte order")
    if wide:
        # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
        header = struct.Struct(order + "HHIQQQIHHH")
        program = struct.Struct(order + "IIQQQQQQ")  # type flags offset vaddr paddr filesz ...
        dynamic = struct.Struct(order + "qQ")
    else:
        header = struct.Struct(order + "HHIIIIIHHH")
        program = struct.Struct(order + "IIIIIIII")  # type offset vaddr paddr filesz memsz ...
        dynamic = struct.Struct(order + "iI")
    return _Layout(order, header, program, dynamic, wide)


def needed(path: Path) -> list[str]:
    """The DT_NEEDED names of one ELF file (none for a static one); ElfError, OSError."""
    with path.open("rb") as f:
        layout = _layout(f.read(16))
        loads, dynamic = _segments(f, layout)
        if dynamic is None:
            return []  # statically linked: loads nothing
        names, strtab = [], None
        offset, size = dynamic
        for i in range(min(size // layout.dynamic.size, MAX_DYNAMIC)):
            tag, value = layout.dynamic.unpack(
                _read(f, offset + i * layout.dynamic.size, layout.dynamic.size)
            )
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                names.append(value)
            elif tag == _DT_STRTAB:
                strtab = _file_offset(value, loads)
        if names and strtab is None:
            raise ElfError("DT_NEEDED without a string table")
        return [_string(f, strtab + n) for n in names] if strtab is not None else []


def _segments(
    f: BinaryIO, layout: _Layout
) -> tuple[list[tuple[int, int, int]], tuple[int, int] | None]:
    """The loaded segments (vaddr, filesz, offset) and the dynamic one (offset, size)."""
    fields = layout.header.unpack(_read(f, 16, layout.header.size))
    phoff, phentsize, phnum = fields[4], fields[8], fields[9]
    if phnum > MAX_PHNUM or (phnum and phentsize < layout.program.size):
        raise ElfError("implausible program headers")
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        entry = layout.program.unpack(_read(f, phoff + i * phentsize, layout.program.size))
        if layout.wide:
            kind, _, offset, vaddr, _, filesz = entry[:6]
        else:
            kind, offset, vaddr, _, filesz = entry[:5]
        if kind == _PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    return loads, dynamic


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    for start, size, offset in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    raise ElfError("the string table is in no loaded segment")


def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError("truncated")
    return data


def _string(f: BinaryIO, offset: int) -> str:
    f.seek(offset)
    data = f.read(MAX_NAME)
    end = data.find(b"\0")
    if end < 0:
        raise ElfError("unterminated library name")
    return data[:end].decode("utf-8", "replace")


def linkage(path: Path, lib_dirs: Iterable[str] = LIB_DIRS) -> bool | None:
    """Whether `path` loads libwrap (directly or through its libraries): True, False
    when every library it needs was found and read, None when that cannot be told."""
    dirs = [Path(d) for d in lib_dirs]
    todo, seen = [path], set()
    complete = True
    while todo:
        current = todo.pop()
        try:
            names = needed(current)
        except (OSError, ElfError):
            complete = False
            continue
        if LIBWRAP in names:
            return True
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            if len(seen) > MAX_LIBRARIES:
                return None
            candidates = [Path(name)] if "/" in name else [d / name for d in dirs]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                complete = False
            else:
                todo.append(found)
    return False if complete else None


def binary(
    daemon: str, *, bin_dirs: Iterable[str] = BIN_DIRS, inetd_conf: str = INETD_CONF
) -> Path | None:
    """The program that asks libwrap for `daemon`, or None when none is found."""
    if not _NAME.fullmatch(daemon) or daemon in (".", ".."):
        return None
    if daemon == "sshd" and Path(SSHD_SESSION).is_file():
        return Path(SSHD_SESSION)
    if daemon in through_tcpd(inetd_conf):
        daemon = TCPD
    return next((Path(d) / daemon for d in bin_dirs if (Path(d) / daemon).is_file()), None)


def through_tcpd(inetd_conf: str = INETD_CONF) -> set[str]:
    """The daemon names /etc/inetd.conf runs through tcpd (tcpd names them by argv[0])."""
    try:
        text = Path(inetd_conf).read_text(errors="replace")
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 7 and not words[0].startswith("#") and Path(words[5]).name == TCPD:
            names.add(Path(words[6]).name)
    return names
