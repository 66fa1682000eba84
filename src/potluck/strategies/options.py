"""Declared numeric options of rules, server steps and strategies, and their checks.

Every aggregation rule and server step lists its options as :class:`Option` rows (name,
default, range, meaning); a strategy's options are its step's, then its rule's, then
its own (FedProx's ``mu``). :func:`resolve_options` turns what a user gave into checked
floats, so ``-S`` values, TOML tables and constructor arguments get the same errors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.core.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """A range rule for a numeric option: ``test`` must hold; ``requirement`` says it."""

    requirement: str
    test: Callable[[float], bool]


POSITIVE = Check("must be > 0", lambda v: v > 0)
NON_NEGATIVE = Check("must be >= 0", lambda v: v >= 0)
UNIT_INTERVAL = Check("must be in [0, 1)", lambda v: 0 <= v < 1)
COUNT = Check("must be a whole number >= 0", lambda v: v >= 0 and v == int(v))
HALF = Check("must be in [0, 0.5)", lambda v: 0 <= v < 0.5)


@dataclass(frozen=True)
class Option:
    """One numeric option: its name, default, valid range and meaning."""

    name: str
    default: float
    check: Check
    description: str


def resolve_options(owner: str, table: Sequence[Option], given: Mapping[str, object]) -> dict[str, float]:
    """Every option of ``table``, from ``given`` or its default, checked, in table order.

    ``owner`` starts every message (``"strategy fedadam"``). Raises ``ConfigError`` for
    an unknown name (listing the valid ones), a value that is not a real number
    (``bool`` is not one), a non-finite value or one out of range, e.g.
    ``strategy fedadam: option beta1 must be in [0, 1), got 1.5``.
    """
    known = {opt.name for opt in table}
    unknown = sorted(set(given) - known)
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{owner}: unknown option {unknown[0]!r}; valid options: {valid}")
    return {opt.name: _checked(owner, opt, given.get(opt.name, opt.default)) for opt in table}


def _checked(owner: str, opt: Option, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{owner}: option {opt.name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{owner}: option {opt.name} must be finite, got {value!r}")
    if not opt.check.test(number):
        raise ConfigError(f"{owner}: option {opt.name} {opt.check.requirement}, got {value!r}")
    return number


def describe(table: Sequence[Option]) -> list[tuple[str, float, str]]:
    """``(name, default, "meaning (range)")`` for each option of ``table``, in order."""
    return [(opt.name, opt.default, f"{opt.description} ({opt.check.requirement})") for opt in table]


SERVER_LR_1 = Option("server_lr", 1.0, POSITIVE, "server learning rate η: x ← x + η·Δ")
