"""What the built-in tasks' fit settings share: merging a run's ``[fit]`` table over a
task's defaults, refusing unknown keys, and the value checks.

A task's settings are a frozen dataclass (``FitSettings`` in torch_task.py, ``LMSettings``
in lm_task.py); each checks its own rules and names itself in the messages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from potluck.core.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


def settings_over(settings: S, config: Mapping[str, Any]) -> S:
    """``settings`` (a dataclass) with ``config``'s values for its fields; other keys are
    left to others (unchecked here)."""
    names = [f.name for f in dataclasses.fields(settings)]
    return dataclasses.replace(settings, **{k: config[k] for k in names if k in config})


def check_known(task: str, config: Mapping[str, Any], known: Iterable[str]) -> None:
    """``ConfigError`` naming the first key of ``config`` (sorted) that is not ``known``;
    the message lists ``known`` in the order given."""
    names = list(known)
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ConfigError(f"task {task}: unknown fit setting {unknown[0]!r}; known: {', '.join(names)}")


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
