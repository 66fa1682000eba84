"""Imports point downward only (see potluck/__init__.py for the layer order)."""

from __future__ import annotations

import ast
from pathlib import Path

import potluck

PACKAGE = Path(potluck.__file__).parent
# Lower index = lower layer. A module may import its own layer and layers below it.
LAYERS = ["core", "transport", "tasks", "strategies", "updates", "ledger", "runtime", "peer", "observability", "dashboard", "backends", "apps",
          "cli"]
# Layers that sit beside each other and must not know each other.
INDEPENDENT = {("tasks", "strategies"), ("strategies", "tasks")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "potluck" and parts[1] in LAYERS else None


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def test_every_module_is_in_a_layer():
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert top <= set(LAYERS), f"folders without a layer: {top - set(LAYERS)}"


def test_imports_point_downward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer("potluck." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own is None:
            continue
        for lineno, module in _imports(path):
            target = _layer(module)
            if target is None:
                continue
            if LAYERS.index(target) > LAYERS.index(own) or (own, target) in INDEPENDENT:
                upward.append(f"{path.relative_to(PACKAGE)}:{lineno} ({own}) imports {module} ({target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_core_needs_only_numpy_and_the_standard_library():
    allowed = {"numpy", "safetensors", "tomli", "blake3", "potluck"}
    for path in (PACKAGE / "core").rglob("*.py"):
        for _, module in _imports(path):
            root = module.split(".")[0]
            assert root in allowed or root in __import__("sys").stdlib_module_names, f"{path.name} imports {module}"
