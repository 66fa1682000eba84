"""The backends stay in small pieces: modules under 400 lines, functions under 60."""

from __future__ import annotations

import ast
from pathlib import Path

import potluck.backends

BACKENDS = Path(potluck.backends.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_backend_modules_and_functions_are_small():
    too_long = []
    for path in sorted(BACKENDS.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)
