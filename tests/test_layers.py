"""The layer order of refopt: no import cycle between units, and every import goes downward.

A *unit* is a top-level module ``refopt/<name>.py`` or a package ``refopt/<name>/`` (its modules
together); ``refopt/__init__.py`` is the unit ``__init__`` and ``refopt/__main__.py`` the unit
``__main__``. Every import counts: top-level and inside functions (lazy), absolute and relative. The
declared order is the "Layer order" line of CONTRIBUTING.md's Architecture section, parsed here, so the
document and this test cannot disagree. Imports inside a unit (``optim/kfac.py`` → ``optim/base.py``)
are not layer edges.
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "refopt"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"

# Edges known to be wrong and being removed by other work, as (importer, imported); none left (the
# typed-oracle work of issue 10 removed curvature → oracle). test_pending_exceptions_are_still_needed
# fails for an entry whose edge no longer exists.
PENDING: set = set()


def declared_order(text: str) -> list:
    """The units of the line ``Layer order (lowest first): `a` → `b` → ...`` in CONTRIBUTING.md."""
    lines = [line for line in text.splitlines() if line.startswith("Layer order (lowest first):")]
    assert len(lines) == 1, "CONTRIBUTING.md must state the layer order on exactly one 'Layer order' line"
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", lines[0])


def unit_names(package: pathlib.Path) -> set:
    """The units of the package: its top-level modules and subpackages."""
    names = {p.stem for p in package.glob("*.py")}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    return names


def _module_parts(path: pathlib.Path, package: pathlib.Path) -> tuple:
    """('refopt', 'optim', 'kfac') for refopt/optim/kfac.py; a package's __init__ names the package."""
    parts = (package.name,) + path.relative_to(package).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _unit_of(parts: tuple, units: set):
    """The unit a dotted module path (as a tuple) belongs to; None outside the package."""
    if not parts or parts[0] != PACKAGE.name:
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in units else "__init__"  # ``from refopt import __version__``


def collect_imports(package: pathlib.Path) -> list:
    """Every import between units: (importer, imported, "file:line"), lazy imports included."""
    units = unit_names(package)
    edges = []
    for path in sorted(package.rglob("*.py")):
        parts = _module_parts(path, package)
        is_package = path.name == "__init__.py"
        here = _unit_of(parts, units)
        where = str(path.relative_to(package.parent))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=where)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [tuple(alias.name.split(".")) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = parts if is_package else parts[:-1]
                    base = base[:len(base) - (node.level - 1)]
                else:
                    base = ()
                module = base + (tuple(node.module.split(".")) if node.module else ())
                # ``from . import tree`` imports the unit tree; ``from .tree import vdot`` the unit of .tree
                targets = [module + (alias.name,) for alias in node.names] if len(module) == 1 else [module]
            for target in targets:
                there = _unit_of(target, units)
                if there is not None and there != here:
                    edges.append((here, there, f"{where}:{node.lineno}"))
    return edges


def find_cycle(edges) -> list:
    """One cycle of the unit graph as [u, v, ..., u], or [] if there is none."""
    graph: dict = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict = {}  # 1: on the current path, 2: done
    path: list = []

    def visit(u):
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        path.pop()
        state[u] = 2
        return []

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return []


def upward_imports(edges, order: list) -> list:
    """The imports that do not go strictly down the declared order, as "file:line importer → imported"."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(f"{where}: {a} → {b}" for a, b, where in edges
                  if (a, b) not in PENDING and rank[b] >= rank[a])


# ---------------------------------------------------------------------------------------------------
# The real package.

def test_the_order_names_every_unit_once():
    order = declared_order(CONTRIBUTING.read_text(encoding="utf-8"))
    assert len(order) == len(set(order)), f"a unit is listed twice: {order}"
    units = unit_names(PACKAGE)
    assert set(order) == units, (f"not in CONTRIBUTING's layer order: {sorted(units - set(order))}; "
                                 f"listed but not a unit: {sorted(set(order) - units)}")


def test_no_import_cycle_between_units():
    edges = [e for e in collect_imports(PACKAGE) if (e[0], e[1]) not in PENDING]
    cycle = find_cycle(edges)
    if cycle:
        hops = [f"{a} → {b} ({', '.join(w for x, y, w in edges if (x, y) == (a, b))})"
                for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: " + "; ".join(hops))


def test_every_import_goes_down_the_layer_order():
    order = declared_order(CONTRIBUTING.read_text(encoding="utf-8"))
    bad = upward_imports(collect_imports(PACKAGE), order)
    assert not bad, "imports against CONTRIBUTING's layer order (lowest first: " + " → ".join(order) + "):\n" + \
        "\n".join(bad)


def test_pending_exceptions_are_still_needed():
    """An exception for an edge that no longer exists must be removed, so the list cannot go stale."""
    present = {(a, b) for a, b, _ in collect_imports(PACKAGE)}
    assert PENDING <= present, f"remove from PENDING: {sorted(PENDING - present)}"


# ---------------------------------------------------------------------------------------------------
# The checker itself, on a package written here: it must see lazy and relative imports.

def _write(root: pathlib.Path, files: dict) -> pathlib.Path:
    pkg = root / "refopt"
    for name, source in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return pkg


def test_the_checker_sees_lazy_relative_and_absolute_imports(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": '__version__ = "0"\n',
        "low.py": "def f():\n    from .high import g  # lazy\n    return g\n",
        "high.py": "from . import low\nfrom refopt import __version__\n",
        "sub/__init__.py": "",
        "sub/a.py": "from ..low import f\nfrom . import b\n",
        "sub/b.py": "import refopt.high\n",
    })
    edges = {(a, b) for a, b, _ in collect_imports(pkg)}
    assert edges == {("low", "high"), ("high", "low"), ("high", "__init__"), ("sub", "low"), ("sub", "high")}
    assert find_cycle(collect_imports(pkg)) in (["high", "low", "high"], ["low", "high", "low"])
    assert upward_imports(collect_imports(pkg), ["__init__", "low", "high", "sub"]) == [
        "refopt/low.py:2: low → high"]


def test_the_checker_passes_a_layered_package(tmp_path):
    pkg = _write(tmp_path, {"__init__.py": "", "low.py": "X = 1\n",
                            "high.py": "def f():\n    from .low import X\n    return X\n"})
    edges = collect_imports(pkg)
    assert find_cycle(edges) == []
    assert upward_imports(edges, ["__init__", "low", "high"]) == []


def test_the_order_line_is_parsed_from_the_text():
    text = "intro\nLayer order (lowest first): `backend` → `tree` → `cli`.\nmore `x`\n"
    assert declared_order(text) == ["backend", "tree", "cli"]
    with pytest.raises(AssertionError):
        declared_order("no such line\n")
