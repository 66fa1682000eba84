"""Aggregation rules and server update rules.

:class:`WeightedMean` (and its pure form :func:`weighted_mean`) folds nodes' deltas into
an example-weighted mean; a :class:`Strategy` decides what the nodes are told and how the
mean becomes the next global model. Pick one by name with :func:`make_strategy`.
Byzantine-robust strategies (median, trimmed mean, Krum, Multi-Krum, norm bounding)
are in ``robust.py``, their rules in ``robust_rules.py``.

Update stages that nodes apply to their deltas (``updates.py``) live here too:
quantisation (``quantize.py``) and top-k sparsification with error feedback (``topk.py``).
Differential privacy: node-side clipping and noise (``local_dp.py``), server-side
DP-FedAvg (``central_dp.py``) and the ε accountant (``accountant.py``).
"""

from potluck.strategies import local_dp, quantize, topk  # noqa: F401  (registers the "dp", "quantize" and "topk" update stages)
from potluck.strategies.aggregate import WeightedMean, weighted_mean
from potluck.strategies.base import Aggregator, Strategy
from potluck.strategies.fedavg import FedAvg, FedAvgM, FedProx
from potluck.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from potluck.strategies.registry import STRATEGIES, make_strategy, strategy_options
from potluck.strategies.robust import Krum, Median, MultiKrum, NormBound, TrimmedMean
from potluck.strategies.secagg import stage as _secagg_stage  # noqa: F401  (registers "secagg"; secure aggregation)

__all__ = [
    "STRATEGIES", "Aggregator", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedProx",
    "FedYogi", "Strategy", "WeightedMean", "make_strategy", "strategy_options", "weighted_mean",
    "Krum", "Median", "MultiKrum", "NormBound", "TrimmedMean",  # Byzantine-robust (robust.py)
]
