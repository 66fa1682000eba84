"""Every PotluckError subclass, found after importing every potluck module (so a class
defined anywhere, in any layer, is seen), and an instance of each for tests."""

from __future__ import annotations

import importlib
import pkgutil

import potluck
from potluck.core.errors import NodeError, PotluckError


def all_error_classes() -> list[type[PotluckError]]:
    for module in pkgutil.walk_packages(potluck.__path__, "potluck."):
        if not module.name.endswith("__main__"):  # runs the CLI when imported
            importlib.import_module(module.name)
    found: list[type[PotluckError]] = []
    todo = [PotluckError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


def instances(cls: type[PotluckError]) -> list[PotluckError]:
    """One instance of ``cls`` (PayloadError: one per reason that codes differently)."""
    if issubclass(cls, NodeError):
        return [cls("node-a", "it stopped answering")]
    if cls.__name__ == "RecordError":
        return [cls("expired", "a record older than its lifetime")]  # type: ignore[call-arg]
    if cls.__name__ == "PayloadError":
        return [cls("oversize", "payload too big"), cls("digest", "payload does not match")]  # type: ignore[call-arg]
    return [cls(f"a {cls.__name__} for the test")]
