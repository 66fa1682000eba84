"""A strategy is an aggregation rule composed with a server step.

A round's results are folded into the rule's :class:`Aggregator` one at a time, so a
streaming rule keeps memory O(model) whatever the number of nodes. Updates are deltas
(local − global). When every result is in, the :class:`ServerStep` turns the aggregate
Δ into the next global model (plain ``x + η·Δ``, momentum, Adam, Yogi, Adagrad)::

    aggregator = strategy.new_aggregator(x)     # the rule's
    for update, n in results: aggregator.add(update, n)
    x = strategy.apply(x, aggregator.result())  # the step's, then the rule's end_round

Every hook a caller may use is declared here with its default: :meth:`Strategy.fit_config`,
:attr:`Strategy.min_updates`, :attr:`Strategy.needs_each_update`, :meth:`Strategy.state`
and :meth:`Strategy.load_state`; callers never probe with ``getattr``.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping
from typing import ClassVar, Protocol

import numpy as np

from potluck.core.errors import StrategyError
from potluck.core.messages import Scalar
from potluck.core.params import Params
from potluck.strategies.options import Option, resolve_options


class Aggregator(Protocol):
    """Folds weighted updates in one at a time."""

    @property
    def count(self) -> int:
        """Number of updates folded in so far."""

    def add(self, update: Params, weight: float) -> None:
        """Fold in one update; ``weight`` > 0 (usually its number of examples).

        Raises ``SchemaMismatch`` if it does not fit the first update, ``NonFiniteError``
        if it holds NaN/Inf, ``StrategyError`` for a bad weight; the aggregate is
        unchanged when it raises.
        """

    def result(self) -> Params:
        """The aggregate (a delta). Raises ``StrategyError`` when nothing was added."""


def _no_state(owner: str, state: Mapping[str, np.ndarray]) -> None:
    if state:
        raise StrategyError(f"{owner} keeps no state, got {sorted(state)}")


class AggregationRule(abc.ABC):
    """How one round's updates become one aggregate Δ: a factory of :class:`Aggregator`.

    Subclasses set ``name``, list their ``options`` and pass their values to
    ``super().__init__`` (checked, kept in :attr:`settings`). A rule that keeps state
    across rounds (central DP's clip norm) names its keys' ``state_prefixes``.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    state_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **given: float) -> None:
        self.settings: dict[str, float] = resolve_options(f"aggregation rule {self.name}", self.options, given)

    @abc.abstractmethod
    def new_aggregator(self, global_params: Params) -> Aggregator:
        """A fresh aggregator for one round's updates against ``global_params``."""

    @property
    def min_updates(self) -> int:
        """Fewest updates a round needs for this rule (``simulate`` checks it up front)."""
        return 1

    @property
    def needs_each_update(self) -> bool:
        """True (the default) when the rule must see each update, not only their weighted
        sum: then secure aggregation cannot hide them and DP cannot replace the rule."""
        return True

    def end_round(self) -> None:
        """Called once the round's step is applied (central DP moves its clip norm here);
        does nothing by default."""
        return None

    def state(self) -> dict[str, np.ndarray]:
        """State to checkpoint, keyed under :attr:`state_prefixes`; empty by default."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned; ``state`` holds only this rule's keys."""
        _no_state(f"aggregation rule {self.name}", state)


class ServerStep(abc.ABC):
    """How the aggregate Δ moves the global model: ``x ← step(x, Δ)``, maybe with state.

    Subclasses set ``name``, list their ``options`` and pass their values to
    ``super().__init__`` (checked, kept in :attr:`settings`).
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **given: float) -> None:
        self.settings: dict[str, float] = resolve_options(f"server step {self.name}", self.options, given)

    @abc.abstractmethod
    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The next global model (FULL) from the current one and the aggregate (a DELTA)."""

    def state(self) -> dict[str, np.ndarray]:
        """Optimizer state to checkpoint (read-only copies); empty for stateless steps."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned; an empty mapping resets the state."""
        _no_state(f"server step {self.name}", state)


class Strategy:
    """Policy for one run: what nodes are told, how updates combine, the server step.

    ``Strategy(MedianRule(), AdamStep(server_lr=0.1))`` is the coordinate-wise median
    followed by an Adam step. The named presets (``FedAvg``, ``FedAdam``, ``Median``,
    ...) are subclasses that build their pair. The step's state (FedAdam's moments) and
    the rule's are saved with every committed round through :meth:`state` and restored
    by :meth:`load_state`. Subclass to add what nodes are told (:meth:`fit_config`).
    """

    name: str = ""

    def __init__(self, rule: AggregationRule, step: ServerStep, *, name: str | None = None) -> None:
        if not isinstance(rule, AggregationRule):
            raise StrategyError(f"a strategy's rule must be an AggregationRule, got {type(rule).__name__}")
        if not isinstance(step, ServerStep):
            raise StrategyError(f"a strategy's step must be a ServerStep, got {type(step).__name__}")
        self.rule, self.step = rule, step
        self.name = name or self.name or f"{rule.name}+{step.name}"

    @property
    def settings(self) -> dict[str, float]:
        """Every option value of this strategy: the step's, then the rule's."""
        return {**self.step.settings, **self.rule.settings}

    @property
    def min_updates(self) -> int:
        """Fewest updates a round needs (Krum: 2f + 3); the rule's."""
        return self.rule.min_updates

    @property
    def needs_each_update(self) -> bool:
        """True when the rule must see each update (robust rules): no secure aggregation, no DP."""
        return self.rule.needs_each_update

    def fit_config(self, round: int) -> dict[str, Scalar]:
        """Extra settings sent to nodes for this round (FedProx sends its μ); none by default."""
        return {}

    def new_aggregator(self, global_params: Params) -> Aggregator:
        """A fresh aggregator of the rule for one round's updates against ``global_params``."""
        return self.rule.new_aggregator(global_params)

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The step's next global model; advances step and rule state: once per committed round."""
        out = self.step.apply(global_params, aggregate)
        self.rule.end_round()
        return out

    def state(self) -> dict[str, np.ndarray]:
        """The step's state and the rule's (each under its own key prefixes)."""
        return {**self.step.state(), **self.rule.state()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state`: keys under the rule's prefixes go to the rule, the rest
        to the step. Raises ``StrategyError`` (or ``SchemaMismatch``) and changes nothing
        when either part is refused.
        """
        prefixes = self.rule.state_prefixes
        own = {k: v for k, v in state.items() if prefixes and k.startswith(prefixes)}
        rest = {k: v for k, v in state.items() if k not in own}
        before = self.step.state()
        self.step.load_state(rest)
        try:
            self.rule.load_state(own)
        except BaseException:
            self.step.load_state(before)
            raise

    def with_step(self, step: ServerStep) -> Strategy:
        """A copy of this strategy whose server step is ``step`` (``--server-opt``), named
        ``<name>+<step name>``; what nodes are told and the rule are kept."""
        if not isinstance(step, ServerStep):
            raise StrategyError(f"a strategy's step must be a ServerStep, got {type(step).__name__}")
        clone = copy.copy(self)
        clone.step = step
        clone.name = f"{self.name}+{step.name}"
        return clone
