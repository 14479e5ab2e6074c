"""The package's shape, read from its source with ast: imports point down (ARCHITECTURE.md
draws the layers), no module imports itself back through others, and the daemon's parts
read time from wrapalert/clock.py only. A new module must be placed in LAYERS first."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wrapalert"

# Each module's layer; an import may only reach its own layer or one below. Layer 4 has
# two sides that never meet: the pipeline's stages and the sink types.
LEAVES = frozenset(
    {  # import nothing of ours: the client, the pure parsers, the host readers
        "notify", "wire", "match", "netaddr", "confparse", "clock", "userns", "sockdiag",
        "sessions", "hostaddr", "libwrap", "mailroute", "banrule", "bantable", "elflink",
    }
)  # fmt: skip
DOMAIN = frozenset(
    {  # rules and texts every part shares, below configuration
        "confkeys", "model", "scanrule", "story", "digest_view", "mail", "logs", "shield",
        "checkhosts", "hostsaccess", "lockout", "hookinstall", "hostsdeny", "simulate",
        "notice", "hookcheck",
        "fleetwire",
    }
)  # fmt: skip
COMMANDS = frozenset(
    {"cli", "demo", "preview", "manpage", "canary", "explainview"}
)  # the command line, on top
SINK_CORE = frozenset({"sinks", "sinks.base", "sinks.registry"})  # what config asks
LAYERS = {"leaf": 0, "domain": 1, "sink core": 2, "config": 3, "parts": 4, "daemon": 5, "cli": 6}
# The package itself and its namespace packages hold nothing to import.
EMPTY = frozenset({"", "daemon", "pipeline"})


def layer(module: str) -> str:
    """The layer of `module` (its name below wrapalert.); KeyError for one not placed."""
    groups = (
        (LEAVES, "leaf"),
        (DOMAIN, "domain"),
        (SINK_CORE, "sink core"),
        (frozenset({"config"}), "config"),
        (COMMANDS, "cli"),
    )
    for names, name in groups:
        if module in names:
            return name
    if module.startswith(("pipeline.", "sinks.")):
        return "parts"
    if module.startswith("daemon."):
        return "daemon"
    raise KeyError(module)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by its name below wrapalert. ("" for the package)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str) -> set[str]:
    """The modules of ours `module` imports, at module level or inside a function (a lazy
    import is still a dependency); not those under `if TYPE_CHECKING:` (types only)."""
    path, known = modules()[module], modules()
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            # The package imports absolutely (ruff's TID252): a relative one is refused.
            assert not node.level, f"{path}:{node.lineno}: a relative import"
            name = node.module or ""
            for alias in node.names:  # `from wrapalert.pipeline import chain` names a module
                found.add(f"{name}.{alias.name}")
            found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    ours = {name.removeprefix("wrapalert").removeprefix(".") for name in found}
    return {name for name in ours if name in known and name != module and name not in EMPTY}


def test_every_module_has_a_layer() -> None:
    """Each module is placed in a layer, so that the rules below say something about it."""
    unplaced = []
    for module in modules():
        if module in EMPTY:
            continue
        try:
            layer(module)
        except KeyError:
            unplaced.append(module)
    assert unplaced == [], "place these in tests/test_layering.py (and ARCHITECTURE.md)"


def wrong_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of `graph` (module -> the modules it imports) that breaks the layers."""
    wrong = []
    for module in sorted(graph):
        mine = layer(module)
        for target in sorted(graph[module]):
            theirs = layer(target)
            if mine == "leaf" or LAYERS[theirs] > LAYERS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
            elif mine == theirs == "parts" and module.split(".")[0] != target.split(".")[0]:
                wrong.append(f"{module} imports {target}: stages and sinks stay apart")
    return wrong


def test_imports_point_down() -> None:
    """No module imports one of a higher layer; the leaves import nothing of ours; the
    pipeline's stages and the sink types never import each other."""
    assert wrong_imports({m: imports(m) for m in modules() if m not in EMPTY}) == []


def test_each_kind_of_wrong_import_is_found() -> None:
    """The rule above flags an upward import, a leaf importing anything of ours, and a
    stage importing a sink type (graphs made up for the purpose)."""
    graph = {
        "story": {"daemon.server"},
        "wire": {"model"},
        "pipeline.chain": {"sinks.smtp"},
        "daemon.server": {"pipeline.chain", "story"},
    }
    assert len(wrong_imports(graph)) == 3


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from `start` back to itself, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_itself_back() -> None:
    """No cycle of imports, lazy ones included (a lazy import hides a cycle, it does not
    break it)."""
    graph = {m: imports(m) for m in modules() if m not in EMPTY}
    cycles = [cycle for m in sorted(graph) if (cycle := _cycle_from(m, graph)) is not None]
    assert cycles == []


# -- time --------------------------------------------------------------------------------

CLOCK_READS = frozenset({"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter"})
IMPLICIT_NOW = {"localtime": 0, "gmtime": 0, "ctime": 0, "asctime": 0, "strftime": 1}


def clock_reads(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) for each reading of a clock other than through wrapalert.clock."""
    for node in ast.walk(ast.parse(source)):
        what = _clock_read(node)
        if what is not None:
            yield getattr(node, "lineno", 0), what


def _clock_read(node: ast.AST) -> str | None:
    what = None
    if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
        names = [a.name for a in node.names if a.name in CLOCK_READS]
        what = f"from {node.module} import {names[0]}" if names else None
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner, attr = node.value.id, node.attr
        if (owner == "time" and attr in CLOCK_READS) or (
            owner in ("datetime", "date") and attr in ("now", "utcnow", "today")
        ):
            what = f"{owner}.{attr}"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        func = node.func
        if func.attr == "time" and not node.args and not _is_name(func.value, "time"):
            what = "an event loop's time()"  # loop.time(): asyncio's own clock
        elif _is_name(func.value, "time") and len(node.args) <= IMPLICIT_NOW.get(func.attr, -1):
            what = f"time.{func.attr} of the current time"
    return what


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def test_the_daemons_parts_read_time_from_the_clock_only() -> None:
    """In daemon/, pipeline/ and sinks/, no module reads a clock of its own: time comes
    from wrapalert/clock.py (a Clock, or its `wall` and `monotonic_usec` for the
    kernel's own readings), so every timed part runs on a virtual clock in tests."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for module, path in sorted(modules().items())
        if module.startswith(("daemon.", "pipeline.", "sinks."))
        for line, what in clock_reads(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "import time\nnow = time.time()\n",
        "import time\ndef f(now=time.monotonic): ...\n",
        "from time import monotonic\n",
        "import asyncio\nx = asyncio.get_running_loop().time()\n",
        "def f(loop): return loop.time()\n",
        "from datetime import datetime\nx = datetime.now()\n",
        "import time\nx = time.strftime('%H')\n",
        "import time\nx = time.localtime()\n",
    ],
)
def test_each_way_of_reading_a_clock_is_seen(source: str) -> None:
    """The check above finds each way a module could read a clock of its own."""
    assert list(clock_reads(source)) != []


@pytest.mark.parametrize(
    "source",
    [
        "import time\nx = time.strftime('%H', time.localtime(0))\n",
        "from wrapalert.clock import wall\nx = wall()\n",
        "import time\ntime.sleep(0)\n",
    ],
)
def test_formatting_a_given_time_is_no_clock_reading(source: str) -> None:
    """Formatting a time the code was given, or sleeping, reads no clock."""
    assert list(clock_reads(source)) == []


def test_architecture_names_every_module() -> None:
    """ARCHITECTURE.md's table names each module (by its path, or by its file name in a
    row of its package), so a newcomer finds every part's owner there."""
    table = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for module, path in modules().items()
        if module not in EMPTY
        and path.name != "__init__.py"
        and f"`{path.relative_to(PACKAGE)}`" not in table
        and f"`{path.name}`" not in table
    ]
    assert missing == []
