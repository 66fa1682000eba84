"""Aggregation rules and server update rules.

:class:`WeightedMean` (and its pure form :func:`weighted_mean`) folds nodes' deltas into
an example-weighted mean; a :class:`Strategy` decides what the nodes are told and how the
mean becomes the next global model. Pick one by name with :func:`make_strategy`.
Byzantine-robust strategies (median, trimmed mean, Krum, Multi-Krum, norm bounding)
are in ``robust.py``, their rules in ``robust_rules.py``.

Server-side differential privacy lives here too: DP-FedAvg (``central_dp.py``) and the
ε accountant (``accountant.py``). What nodes do to their updates before they travel
(quantisation, top-k, local noise, masking) is the ``potluck.updates`` package.
"""

from potluck.strategies.aggregate import WeightedMean, weighted_mean
from potluck.strategies.base import Aggregator, Strategy
from potluck.strategies.fedavg import FedAvg, FedAvgM, FedProx
from potluck.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from potluck.strategies.registry import STRATEGIES, make_strategy, strategy_options
from potluck.strategies.robust import Krum, Median, MultiKrum, NormBound, TrimmedMean

__all__ = [
    "STRATEGIES", "Aggregator", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedProx",
    "FedYogi", "Strategy", "WeightedMean", "make_strategy", "strategy_options", "weighted_mean",
    "Krum", "Median", "MultiKrum", "NormBound", "TrimmedMean",  # Byzantine-robust (robust.py)
]
