"""The shape of the package stays as docs/ARCHITECTURE.md describes it (the import layers are checked by
``lint-imports``, from the contract in pyproject.toml, in the README's test command)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ben_cli"
MAX_LINES = 450


def test_no_file_holds_more_than_450_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"


def test_no_global_statement_in_the_package() -> None:
    """No hidden module state: a cache is a functools.cache or a named field, never a ``global`` flag."""
    found = [f"{p.relative_to(PACKAGE)}:{node.lineno}" for p in PACKAGE.rglob("*.py")
             for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if isinstance(node, ast.Global)]
    assert not found, f"global statements: {found}"
