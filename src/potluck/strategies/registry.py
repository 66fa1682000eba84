"""Strategies by name, with their options and server step, for configuration files and the CLI.

A name is a preset (``fedavg``, ``median``, ... see :mod:`presets`) or
``module:attribute`` naming your own :class:`~potluck.strategies.base.Strategy`, a
subclass of it, or a function returning one (options are passed to it as keyword
arguments). ``server_opt`` swaps the server step: ``"auto"`` (or ``None``) keeps the
strategy's own; ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi`` or ``fedadagrad``
take that strategy's step, and its options join the strategy's.

>>> make_strategy("fedadam", {"server_lr": 0.1}).settings["server_lr"]
0.1
>>> [name for name, _, _ in strategy_options("fedavgm")]
['server_lr', 'momentum']
>>> make_strategy("median", {"beta1": 0.5}, server_opt="fedadam").name
'median+fedadam'
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import ModuleType

from potluck.core.errors import ConfigError
from potluck.core.imports import import_user_module
from potluck.strategies.base import ServerStep, Strategy
from potluck.strategies.fedopt import AdagradStep, AdamStep, YogiStep
from potluck.strategies.options import Option, describe, resolve_options
from potluck.strategies.presets import PRESETS, Preset
from potluck.strategies.steps import MomentumStep, PlainStep

STRATEGIES: dict[str, type[Preset]] = {cls.name: cls for cls in PRESETS}
SERVER_STEPS: dict[str, type[ServerStep]] = {
    cls.name: cls for cls in (PlainStep, MomentumStep, AdamStep, YogiStep, AdagradStep)
}
SERVER_OPTS: tuple[str, ...] = ("auto", *SERVER_STEPS)
"""Valid values of ``server_opt`` (``--server-opt``); ``auto`` keeps the strategy's own step."""


def make_strategy(name: str, options: Mapping[str, object] | None = None, server_opt: str | None = None) -> Strategy:
    """A new strategy ``name`` configured with ``options``, with ``server_opt``'s step.

    ``options`` is not modified; missing ones take defaults. Raises ``ConfigError`` for
    an unknown strategy or server step (listing the valid ones), an unknown option
    (listing the strategy's options), a value that is not a number or out of range
    (``strategy fedadam: option beta1 must be in [0, 1), got 1.5``), and for a
    ``module:attribute`` that cannot be imported or is not a Strategy.
    """
    given = dict(options or {})
    step_type = _step_type(server_opt)
    if isinstance(name, str) and ":" in name:
        return _user_strategy(name, given, step_type)
    preset = _lookup(name)
    if step_type is None or step_type is preset.step_type:
        return preset(**resolve_options(f"strategy {name}", preset.option_table(), given))
    values = resolve_options(f"strategy {name} with server step {step_type.name}", _table(preset, step_type), given)
    own = preset(**{o.name: values[o.name] for o in (*preset.rule_type.options, *preset.own_options)})
    return own.with_step(step_type(**{o.name: values[o.name] for o in step_type.options}))


def strategy_options(name: str, server_opt: str | None = None) -> list[tuple[str, float, str]]:
    """``(option, default, description)`` for each option of preset ``name`` with
    ``server_opt``'s step, in order. Raises ``ConfigError`` for an unknown name.
    """
    preset = _lookup(name)
    step_type = _step_type(server_opt) or preset.step_type
    return describe(_table(preset, step_type))


def _table(preset: type[Preset], step_type: type[ServerStep]) -> tuple[Option, ...]:
    return (*step_type.options, *preset.rule_type.options, *preset.own_options)


def _lookup(name: str) -> type[Preset]:
    cls = STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))} "
                          "or module:attribute")
    return cls


def _step_type(server_opt: str | None) -> type[ServerStep] | None:
    if server_opt is None or server_opt == "auto":
        return None
    cls = SERVER_STEPS.get(server_opt) if isinstance(server_opt, str) else None
    if cls is None:
        raise ConfigError(f"unknown server step {server_opt!r} (server_opt); valid: {', '.join(SERVER_OPTS)}")
    return cls


# -- module:attribute ---------------------------------------------------------------------


def _user_strategy(spec: str, given: dict[str, object], step_type: type[ServerStep] | None) -> Strategy:
    """The user's strategy from ``spec``; with ``step_type``, options of that step go to it."""
    step_names = {o.name for o in step_type.options} if step_type is not None else set()
    strategy = _instantiate(spec, _import_attr(spec), {k: v for k, v in given.items() if k not in step_names})
    if step_type is None:
        return strategy
    values = resolve_options(f"strategy {spec} with server step {step_type.name}", step_type.options,
                             {k: v for k, v in given.items() if k in step_names})
    return strategy.with_step(step_type(**values))


def _import_attr(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"strategy {spec!r}: name a strategy as module:attribute, e.g. my_rules:Robust")
    try:
        module = _import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"strategy {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"strategy {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc


def _import_module(name: str) -> ModuleType:
    """``import name``, looked for in the current directory too (``core.imports``)."""
    return import_user_module(name)


def _instantiate(spec: str, obj: object, options: dict[str, object]) -> Strategy:
    """A deep copy of ``obj`` when it is a Strategy (so each run starts from its state;
    no options allowed), else ``obj(**options)``."""
    if isinstance(obj, Strategy):
        if options:
            raise ConfigError(f"strategy {spec!r} is a Strategy instance and takes no options, got {sorted(options)}")
        made: object = copy.deepcopy(obj)
    elif callable(obj):
        try:
            made = obj(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"strategy {spec!r} could not be made with options {options}: {exc}") from exc
    else:
        made = obj
    if not isinstance(made, Strategy):
        raise ConfigError(f"strategy {spec!r} is not a Strategy: it gave a {type(made).__name__}; name a "
                          "potluck.strategies.Strategy, a subclass of it, or a function returning one")
    return made
