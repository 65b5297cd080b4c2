"""The package's layout holds: imports run one way (DESIGN §2).

Reads the source with ``ast`` (nothing is imported), so an import a test never
triggers counts as much as one at module level: imports inside functions are edges
too. Not edges: imports under ``if TYPE_CHECKING:`` (annotations only, never run), and
those between a sub-package's ``__init__`` and its own modules (``cli`` registers its
sub-commands). The top package's ``__init__`` is no exception: a module that imported
public names from ``celery_reliable`` while that ``__init__`` imports it would see a
half-initialised package.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import celery_reliable

PACKAGE = "celery_reliable"
ROOT = Path(celery_reliable.__file__).parent

#: Modules that import nothing of Celery, kombu, SQLAlchemy or a client library: their
#: docstrings say "Pure module", and the pure ones of DESIGN §2 are among them.
PURE = {
    "backoff",
    "decisions",
    "docs",
    "errors",
    "headers",
    "idempotency",
    "metrics",
    "options",
    "outcomes",
    "policy",
}
NOT_PURE = ("celery", "kombu", "sqlalchemy", "redis", "statsd", "sentry_sdk", "billiard")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_package(name: str, found: dict[str, Path]) -> bool:
    return found[name].name == "__init__.py"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imported_names(name: str, path: Path, package: bool) -> Iterator[tuple[str, int]]:
    """Every absolute module name ``name`` imports, with the line, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    base = name if package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
            continue
        if node.level:
            anchor = base
            for _ in range(node.level - 1):
                anchor = anchor.rpartition(".")[0]
            module = f"{anchor}.{node.module}" if node.module else anchor
        else:
            module = node.module or ""
        for alias in node.names:
            # ``from pkg import submodule`` imports the submodule; a name, the module.
            yield (
                (f"{module}.{alias.name}", node.lineno)
                if submodule(module, alias.name)
                else (module, node.lineno)
            )


def submodule(module: str, name: str) -> bool:
    return f"{module}.{name}" in modules() or not module.startswith(PACKAGE)


def edges() -> list[Edge]:
    found = modules()
    result: set[Edge] = set()
    for name, path in found.items():
        for imported, line in imported_names(name, path, is_package(name, found)):
            if imported != PACKAGE and not imported.startswith(PACKAGE + "."):
                continue
            assert imported in found, f"{name} line {line}: no module {imported}"
            # The module named, as written: importing a.b.c also runs a/b/__init__
            # first, but a package's __init__ gathering its modules' names is not a
            # dependency of the modules that import one of them.
            if imported != name and not _inside_own_package(name, imported, found):
                result.add(Edge(name, imported, line))
    return sorted(result, key=lambda e: (e.source, e.target, e.line))


def _inside_own_package(a: str, b: str, found: dict[str, Path]) -> bool:
    """A sub-package and one of its own modules (either way round)."""
    for outer, inner in ((a, b), (b, a)):
        if outer != PACKAGE and is_package(outer, found) and inner.startswith(outer + "."):
            return True
    return False


def cycles(graph: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    successors: dict[str, set[str]] = {}
    for edge in graph:
        successors.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(successors.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_imports_inside_functions_and_skips_annotations(tmp_path: Path) -> None:
    """The walker itself: a lazy import is an edge, a TYPE_CHECKING one is not."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from celery_reliable.task import ReliableTask\n"
        "def f():\n"
        "    from celery_reliable import wiring\n"
        "    import celery_reliable.store.engine\n"
    )
    names = {n for n, _ in imported_names("celery_reliable.m", source, package=False)}
    assert "celery_reliable.wiring" in names
    assert "celery_reliable.store.engine" in names
    assert "celery_reliable.task" not in names


def test_a_cycle_is_found() -> None:
    graph = [Edge("a", "b", 1), Edge("b", "c", 1), Edge("c", "a", 1), Edge("c", "d", 1)]
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = edges()
    assert len(graph) > 100  # the walker read the package
    found = cycles(graph)
    detail = [
        [str(e) for e in graph if e.source in component and e.target in component]
        for component in found
    ]
    assert not found, f"import cycles between files (DESIGN §2): {detail}"


def test_at_most_twenty_modules_at_the_top_level() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 20, f"{len(top)} modules at the top level: give them rooms: {top}"


def test_only_the_wiring_imports_the_observers() -> None:
    importers = {
        e.source
        for e in edges()
        if e.target.startswith(f"{PACKAGE}.observers")
        and not e.source.startswith(f"{PACKAGE}.observers")
    }
    assert importers == {f"{PACKAGE}.wiring"}


def test_nothing_below_imports_the_worker_the_cli_the_web_view_or_testing() -> None:
    """The worker's machinery and the layers on top are imported from above only: the
    top package connects the worker's receivers, and Celery loads the bootstep by name."""
    allowed = {
        f"{PACKAGE}.worker": {PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.testing", f"{PACKAGE}.web"},
        f"{PACKAGE}.cli": {f"{PACKAGE}.testing"},
        f"{PACKAGE}.web": {f"{PACKAGE}.cli"},
        f"{PACKAGE}.testing": set(),
    }
    wrong = []
    for edge in edges():
        for room, importers in allowed.items():
            inside = edge.source == room or edge.source.startswith(room + ".")
            allowed_here = any(
                edge.source == i or edge.source.startswith(i + ".") for i in importers
            )
            if edge.target.startswith(room) and not inside and not allowed_here:
                wrong.append(str(edge))
    assert not wrong


def test_pure_modules_import_no_library() -> None:
    found = modules()
    wrong = []
    for name in sorted(PURE):
        path = found[f"{PACKAGE}.{name}"]
        for imported, line in imported_names(f"{PACKAGE}.{name}", path, package=False):
            if imported.split(".")[0] in NOT_PURE:
                wrong.append(f"{name}: {imported} (line {line})")
    assert not wrong


def test_importing_the_package_loads_no_store_or_broker_library() -> None:
    """A process that only publishes (a Django web process) imports celery_reliable for
    its task modules: the store's SQLAlchemy and Alembic, a Redis client and the web
    view's libraries load when something uses them, not at import."""
    import subprocess
    import sys

    heavy = ["sqlalchemy", "alembic", "redis", "statsd", "sentry_sdk", "starlette"]
    code = f"import sys, celery_reliable; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"loaded at import: {done.stdout.strip()}"
