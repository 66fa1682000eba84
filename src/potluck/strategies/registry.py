"""Strategies by name, with their options, for configuration files and the CLI.

>>> make_strategy("fedadam", {"server_lr": 0.1}).server_lr
0.1
>>> [name for name, _, _ in strategy_options("fedavgm")]
['server_lr', 'momentum']
"""

from __future__ import annotations

from collections.abc import Mapping

from potluck.core.errors import ConfigError
from potluck.strategies.base import Strategy
from potluck.strategies.fedavg import FedAvg, FedAvgM, FedProx, Option, resolve_options
from potluck.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from potluck.strategies.robust import ROBUST_STRATEGIES

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, *ROBUST_STRATEGIES)
}


def _lookup(name: str) -> type[Strategy]:
    cls = STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    return cls


def _options_of(cls: type[Strategy]) -> tuple[Option, ...]:
    return tuple(getattr(cls, "options", ()))


def make_strategy(name: str, options: Mapping[str, object] | None = None) -> Strategy:
    """A new strategy ``name`` configured with ``options`` (missing ones take defaults).

    ``options`` is not modified. Raises ``ConfigError`` for an unknown strategy (listing
    the valid ones), an unknown option (listing the strategy's options), a value that is
    not a number, or one out of range, e.g.
    ``strategy fedadam: option beta1 must be in [0, 1), got 1.5``.
    """
    cls = _lookup(name)
    values = resolve_options(cls.name, _options_of(cls), dict(options or {}))
    return cls(**values)


def strategy_options(name: str) -> list[tuple[str, float, str]]:
    """``(option, default, description)`` for each option of strategy ``name``, in order.

    Raises ``ConfigError`` for an unknown strategy.
    """
    cls = _lookup(name)
    return [(opt.name, opt.default, f"{opt.description} ({opt.check.requirement})") for opt in _options_of(cls)]
