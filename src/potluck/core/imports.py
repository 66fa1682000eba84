"""Importing the user's modules (``--task module:attr``, ``--strategy module:attr``)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_user_module(name: str) -> ModuleType:
    """``import name``; a module not found is looked for in the current directory too
    (which is then added to the end of ``sys.path``), as ``python -m`` would, so
    ``--task examples.numpy_task:task`` works from a checkout's root.

    Raises ``ImportError`` (``ModuleNotFoundError`` when it is nowhere)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != name.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        importlib.invalidate_caches()
        return importlib.import_module(name)
