"""The promise that every public function has a docstring, checked over the whole ``refopt`` package.

Public: a module-level function or class, or a method, property or nested class of a class, whose name
does not start with "_". Closures nested inside functions are exempt.
"""
from __future__ import annotations

import ast
import pathlib

import refopt

PACKAGE = pathlib.Path(refopt.__file__).resolve().parent


def _missing(path: pathlib.Path, root: pathlib.Path) -> list[str]:
    """``path:line name`` (path relative to ``root``) for every public definition without a docstring."""
    found = []

    def visit(node, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                if not nested and not child.name.startswith("_") and ast.get_docstring(child) is None:
                    found.append(f"{path.relative_to(root)}:{child.lineno} {child.name}")
                visit(child, nested or isinstance(child, ast.FunctionDef))

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def test_every_public_definition_has_a_docstring():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no modules found under {PACKAGE}"
    missing = [entry for path in files for entry in _missing(path, PACKAGE.parent)]
    assert not missing, "public definitions without a docstring:\n  " + "\n  ".join(missing)


def test_the_check_finds_what_it_should(tmp_path):
    source = '''
def f():
    def closure():
        pass

def _private():
    pass

class A:
    def method(self):
        """Documented."""
        def inner():
            pass

    @property
    def prop(self):
        pass

    class Nested:
        pass

class _Hidden:
    def shown(self):
        pass
'''
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [entry.split(" ")[1] for entry in _missing(path, tmp_path)] == ["f", "A", "prop", "Nested", "shown"]
