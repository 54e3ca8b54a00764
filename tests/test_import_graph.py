"""The package's import graph, read from the source (ast, nothing imported): no cycles between
modules, and the rooms' rules of ../shared/design.md: ``core`` and ``nn`` never import ``methods``;
``core``, ``methods``, ``io`` and ``nn`` never import ``_qt``, napari or Qt.

Every import counts, those inside functions too (a lazy import is still a dependency; it only
moves the cost). ``if TYPE_CHECKING:`` imports are left out (they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import napari_edof

ROOT = Path(napari_edof.__file__).resolve().parent
#: cycles being taken apart (none now; issue 15 took apart engine <-> stream and io's circle)
KNOWN_CYCLES: list[list[str]] = []
PKG = "napari_edof"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports (``from x import y`` counts ``x.y`` when it is a
    module, else ``x``); external packages by their top-level name."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for n in child.orelse:
                    visit_one(n)
                continue
            visit_one(child)

    def visit_one(child):
        if isinstance(child, ast.Import):
            for a in child.names:
                out.add(a.name if a.name.startswith(PKG) else a.name.split(".")[0])
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                target = ".".join(base[: len(base) - child.level + 1] + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            if not target.startswith(PKG):
                out.add(target.split(".")[0])
            else:
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    out.add(sub if sub in known else target)
        visit(child)

    visit(tree)
    out.discard(name)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: {i for i in _imports(m, p, known)} for m, p in mods.items()}


def _internal(graph, m):
    """Edges to the package's modules, a package's ``__init__`` left out when the edge goes to a
    module inside it (``from .core.x import y`` runs ``core/__init__`` first, which imports
    nothing that matters here; ``napari_edof/__init__`` is the public face, imported by all)."""
    return {i for i in graph[m] if i.startswith(PKG) and i in graph and i != PKG}


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over module-level and function-level imports."""
    index, low, on, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in _internal(graph, v):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    sccs = [c for c in sccs if c not in KNOWN_CYCLES]
    assert not sccs, "import cycles: " + "; ".join(" <-> ".join(c) for c in sccs)


@pytest.mark.parametrize("room", ["core", "nn"])
def test_core_and_nn_never_import_methods(graph, room):
    bad = sorted(f"{m} -> {i}" for m in graph if m.startswith(f"{PKG}.{room}")
                 for i in graph[m] if i.startswith(f"{PKG}.methods"))
    assert not bad, bad


@pytest.mark.parametrize("room", ["core", "methods", "io", "nn"])
def test_rooms_never_import_the_gui(graph, room):
    bad = sorted(f"{m} -> {i}" for m in graph if m.startswith(f"{PKG}.{room}")
                 for i in graph[m] if i.startswith(f"{PKG}._qt") or i in ("napari", "qtpy", "PyQt6", "magicgui"))
    assert not bad, bad


def test_nothing_imports_the_package_version_from_above(graph):
    """``__version__`` comes from ``napari_edof._version`` (a leaf), not from the package's __init__."""
    bad = sorted(m for m in graph if m != PKG and PKG in graph[m])
    assert not bad, f"modules importing the package's __init__ (from .. import x): {bad}"
