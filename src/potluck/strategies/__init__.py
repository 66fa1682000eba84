"""Strategies: an aggregation rule composed with a server step.

An :class:`AggregationRule` folds a round's updates into one aggregate Δ through a
streaming :class:`Aggregator` (the weighted mean, :class:`WeightedMean`; robust rules:
median, trimmed mean, Krum, Multi-Krum, norm bound; central DP's clipped noisy mean).
A :class:`ServerStep` turns Δ into the next global model (plain, momentum, Adam, Yogi,
Adagrad). A :class:`Strategy` composes one of each and says what nodes are told; the
named presets (``FedAvg``, ``FedAdam``, ``Median``, ...) are in ``presets.py``. Pick one
by name, or ``module:attribute`` for your own, with :func:`make_strategy`; its
``server_opt`` swaps the step (``median`` with ``fedadam``).

Modules, lowest first: ``options`` (declared options), ``aggregate`` (the streaming
mean), ``robust_rules`` (pure robust functions), ``base`` (the interfaces), ``rules``,
``steps`` and ``fedopt`` (implementations), ``presets``, ``central_dp`` and
``accountant`` (server-side DP and its ε), ``registry``. What nodes do to their updates
before they travel (quantisation, top-k, local noise, masking) is ``potluck.updates``.
"""

from potluck.strategies.aggregate import WeightedMean, weighted_mean
from potluck.strategies.base import AggregationRule, Aggregator, ServerStep, Strategy
from potluck.strategies.fedopt import AdagradStep, AdamStep, YogiStep
from potluck.strategies.options import Option
from potluck.strategies.presets import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Krum,
    Median,
    MultiKrum,
    NormBound,
    TrimmedMean,
)
from potluck.strategies.registry import SERVER_OPTS, SERVER_STEPS, STRATEGIES, make_strategy, strategy_options
from potluck.strategies.rules import (
    BufferedAggregator,
    KrumRule,
    MeanRule,
    MedianRule,
    MultiKrumRule,
    NormBoundRule,
    TrimmedMeanRule,
)
from potluck.strategies.steps import MomentumStep, PlainStep

__all__ = [
    "SERVER_OPTS", "SERVER_STEPS", "STRATEGIES", "AdagradStep", "AdamStep", "AggregationRule", "Aggregator",
    "BufferedAggregator", "Option",
    "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedProx", "FedYogi", "Krum", "KrumRule", "MeanRule", "Median",
    "MedianRule", "MomentumStep", "MultiKrum", "MultiKrumRule", "NormBound", "NormBoundRule", "PlainStep",
    "ServerStep", "Strategy", "TrimmedMean", "TrimmedMeanRule", "WeightedMean", "YogiStep", "make_strategy",
    "strategy_options", "weighted_mean",
]
