"""Imports read off the source, for the layout tests (tests/unit/test_layers.py,
tests/integration/test_layout.py): one scanner, so the two rules see imports the same way."""

from __future__ import annotations

import ast
from pathlib import Path


def imports_in(source: str, filename: str = "<source>", *, members: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth (inside a function too):
    `import a.b`, `from a.b import c` (`a.b`, and `a.b.c` too when `members`: `from services import cli`
    names `services.cli`), and `importlib.import_module("a")` / `__import__("a")` with a literal name.
    Relative imports stay inside their own package and are left out."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if members:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def file_imports(path: Path, *, members: bool = False) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), str(path), members=members)
