"""The named strategies: each a preset pair of an aggregation rule and a server step.

=============  ==============  ===========  ===================================
strategy       rule            step         options (step's, then rule's, own)
=============  ==============  ===========  ===================================
fedavg         mean            fedavg       server_lr
fedavgm        mean            fedavgm      server_lr, momentum
fedprox        mean            fedavg       server_lr, mu (sent to nodes)
fedadam        mean            fedadam      server_lr, beta1, beta2, tau
fedyogi        mean            fedyogi      server_lr, beta1, beta2, tau
fedadagrad     mean            fedadagrad   server_lr, beta1, tau
median         median          fedavg       server_lr
trimmed-mean   trimmed-mean    fedavg       server_lr, trim
krum           krum            fedavg       server_lr, byzantine
multi-krum     multi-krum      fedavg       server_lr, byzantine, select
norm-bound     norm-bound      fedavg       server_lr, max_norm
=============  ==============  ===========  ===================================

:meth:`~potluck.strategies.base.Strategy.with_step` swaps the step of any of them
(``make_strategy("median", server_opt="fedadam")``). The names are the registry's
(:mod:`registry`) and the checkpointed state keys are the step's (``momentum/``,
``m/``, ``v/``), so runs saved before rules and steps were split resume unchanged.
"""

from __future__ import annotations

from typing import ClassVar

from potluck.core.messages import Scalar
from potluck.strategies.base import AggregationRule, ServerStep, Strategy
from potluck.strategies.fedopt import AdagradStep, AdamStep, YogiStep
from potluck.strategies.options import NON_NEGATIVE, Option, resolve_options
from potluck.strategies.rules import (
    KrumRule,
    MeanRule,
    MedianRule,
    MultiKrumRule,
    NormBoundRule,
    TrimmedMeanRule,
)
from potluck.strategies.steps import MomentumStep, PlainStep


class Preset(Strategy):
    """A named strategy: ``rule_type`` with ``step_type``, options checked as ``strategy <name>``.

    Subclasses set ``name``, ``rule_type``, ``step_type`` (and ``own_options`` for
    options that are neither the rule's nor the step's) and give ``__init__`` the
    options as keyword arguments with their defaults.
    """

    rule_type: ClassVar[type[AggregationRule]] = MeanRule
    step_type: ClassVar[type[ServerStep]] = PlainStep
    own_options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def option_table(cls) -> tuple[Option, ...]:
        """Every option of this preset, in order: the step's, the rule's, its own."""
        return (*cls.step_type.options, *cls.rule_type.options, *cls.own_options)

    def __init__(self, **given: float) -> None:
        values = resolve_options(f"strategy {self.name}", self.option_table(), given)
        rule = self.rule_type(**{o.name: values[o.name] for o in self.rule_type.options})
        step = self.step_type(**{o.name: values[o.name] for o in self.step_type.options})
        super().__init__(rule, step)
        self.own_settings = {o.name: values[o.name] for o in self.own_options}

    @property
    def settings(self) -> dict[str, float]:
        return {**super().settings, **self.own_settings}


class FedAvg(Preset):
    """Federated averaging (McMahan et al. 2017): the weighted mean, then ``x + η·Δ``.

    With the default ``server_lr`` η = 1 the new model is the example-weighted average
    of the nodes' local models. Stateless.
    """

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        super().__init__(server_lr=server_lr)


class FedProx(Preset):
    """FedAvg on the server; nodes add the proximal term (μ/2)·‖w − x‖² to their loss.

    ``mu`` reaches nodes as ``proximal_mu`` in :meth:`fit_config`; a Task that ignores
    it trains plain FedAvg. μ = 0 is FedAvg exactly.
    """

    name = "fedprox"
    own_options: ClassVar[tuple[Option, ...]] = (
        Option("mu", 0.01, NON_NEGATIVE, "proximal coefficient μ sent to nodes as proximal_mu"),
    )

    def __init__(self, *, server_lr: float = 1.0, mu: float = 0.01) -> None:
        super().__init__(server_lr=server_lr, mu=mu)

    def fit_config(self, round: int) -> dict[str, Scalar]:
        return {"proximal_mu": self.own_settings["mu"]}


class FedAvgM(Preset):
    """FedAvg with server momentum (Hsu et al. 2019): the mean, then :class:`MomentumStep`."""

    name = "fedavgm"
    step_type = MomentumStep

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr=server_lr, momentum=momentum)


class FedAdam(Preset):
    """FedAdam (Reddi et al. 2021): the mean, then :class:`AdamStep`."""

    name = "fedadam"
    step_type = AdamStep

    def __init__(self, *, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


class FedYogi(Preset):
    """FedYogi (Reddi et al. 2021): the mean, then :class:`YogiStep`."""

    name = "fedyogi"
    step_type = YogiStep

    def __init__(self, *, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


class FedAdagrad(Preset):
    """FedAdagrad (Reddi et al. 2021): the mean, then :class:`AdagradStep`."""

    name = "fedadagrad"
    step_type = AdagradStep

    def __init__(self, *, server_lr: float = 0.01, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau)


class Median(Preset):
    """Coordinate-wise median (:class:`MedianRule`), then ``x + η·Δ``."""

    name = "median"
    rule_type = MedianRule

    def __init__(self, *, server_lr: float = 1.0) -> None:
        super().__init__(server_lr=server_lr)


class TrimmedMean(Preset):
    """Coordinate-wise β-trimmed mean (:class:`TrimmedMeanRule`), then ``x + η·Δ``."""

    name = "trimmed-mean"
    rule_type = TrimmedMeanRule

    def __init__(self, *, server_lr: float = 1.0, trim: float = 0.1) -> None:
        super().__init__(server_lr=server_lr, trim=trim)


class Krum(Preset):
    """Krum (:class:`KrumRule`), then ``x + η·Δ``; a round needs ``n > 2f + 2`` updates."""

    name = "krum"
    rule_type = KrumRule

    def __init__(self, *, server_lr: float = 1.0, byzantine: float = 1.0) -> None:
        super().__init__(server_lr=server_lr, byzantine=byzantine)


class MultiKrum(Preset):
    """Multi-Krum (:class:`MultiKrumRule`), then ``x + η·Δ``."""

    name = "multi-krum"
    rule_type = MultiKrumRule

    def __init__(self, *, server_lr: float = 1.0, byzantine: float = 1.0, select: float = 0.0) -> None:
        super().__init__(server_lr=server_lr, byzantine=byzantine, select=select)


class NormBound(Preset):
    """Norm bounding (:class:`NormBoundRule`), then ``x + η·Δ``."""

    name = "norm-bound"
    rule_type = NormBoundRule

    def __init__(self, *, server_lr: float = 1.0, max_norm: float = 1.0) -> None:
        super().__init__(server_lr=server_lr, max_norm=max_norm)


ROBUST_STRATEGIES: tuple[type[Preset], ...] = (Median, TrimmedMean, Krum, MultiKrum, NormBound)
PRESETS: tuple[type[Preset], ...] = (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, *ROBUST_STRATEGIES)
