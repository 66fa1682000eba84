"""The strategy interface: streaming aggregation plus a server-side update rule.

A round's results are folded into an :class:`Aggregator` one at a time, so memory stays
O(model) whatever the number of nodes. Updates are deltas (local − global). When every
result is in, :meth:`Strategy.apply` turns the aggregate into the next global model
(plain FedAvg adds it; FedOpt variants feed it to a server optimizer).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import ClassVar, Protocol

import numpy as np

from potluck.core.messages import Scalar
from potluck.core.params import Params


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


class Strategy(abc.ABC):
    """Policy for one run: what nodes are told, how updates combine, the server step.

    Strategies hold the server optimizer's state (e.g. FedAdam moments); it is saved
    with every committed round through :meth:`state` and restored by :meth:`load_state`.
    """

    name: ClassVar[str]

    def fit_config(self, round: int) -> dict[str, Scalar]:
        """Extra settings sent to nodes for this round (FedProx sends its μ)."""
        return {}

    @abc.abstractmethod
    def new_aggregator(self, global_params: Params) -> Aggregator:
        """A fresh aggregator for one round's updates against ``global_params``."""

    @abc.abstractmethod
    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The next global model (full weights) from the current one and the aggregate."""

    def state(self) -> dict[str, np.ndarray]:
        """Server-side state to checkpoint; empty for stateless strategies."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""
        if state:
            raise ValueError(f"strategy {self.name} keeps no state, got {sorted(state)}")
