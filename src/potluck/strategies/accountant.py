"""The privacy accountant: ε spent after k rounds, and a guard that stops at a budget.

Uses Google's ``dp-accounting`` (RDP accountant). One round of central or distributed
DP-FedAvg is a Poisson-sampled Gaussian mechanism at the node level::

    PoissonSampledDpEvent(sampling_probability=q, GaussianDpEvent(noise_multiplier=σ))

composed once per round, with q = nodes per round / nodes in the federation. potluck
samples a fixed-size subset each round (without replacement); accounting for Poisson
sampling at that rate is the usual approximation in the federated DP literature
(McMahan et al. 2018 do the same).

``local`` mode is accounted per node, as the server sees it: each round the node's
own update is a Gaussian mechanism whose L2 sensitivity is 2C (any two clipped updates
differ by at most 2C), so σ/2 per round, with no amplification by sampling (the
server knows who was sampled) and assuming the node took part in every round.

ε after k rounds is a function of k alone, so the accountant keeps no state: a resumed
run counts its committed rounds by their numbers. The library's RDP of one round (at
its default orders) is computed once, about 0.5 s; k rounds compose to k times that
vector, exactly what ``RdpAccountant.compose(event, k)`` holds, so every later ε costs
microseconds and equals the library's own figure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from potluck.core.errors import BudgetExhausted, ConfigError

MODES = ("central", "distributed", "local")


def dp_event(mode: str, noise_multiplier: float, sampling_probability: float) -> Any:
    """The ``dp_accounting`` event of one round in ``mode`` (see the module docstring)."""
    from dp_accounting import dp_event as events  # type: ignore[import-untyped]

    if mode == "local":
        return events.GaussianDpEvent(noise_multiplier / 2)
    if mode in ("central", "distributed"):
        return events.PoissonSampledDpEvent(sampling_probability, events.GaussianDpEvent(noise_multiplier))
    raise ConfigError(f"accountant: mode must be one of {', '.join(MODES)}, got {mode!r}")


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning for every RDP order it cannot evaluate and skips it."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def round_accountant(event: Any) -> Any:
    """A dp-accounting ``RdpAccountant`` holding one round, that also answers for k rounds."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp  # type: ignore[import-untyped]

    class OneRound(rdp.RdpAccountant):  # type: ignore[misc]
        def epsilon_after(self, rounds: int, delta: float) -> float:
            """ε after ``rounds`` compositions: the RDP of k rounds is k times one round's."""
            return float(rdp.compute_epsilon(self._orders, rounds * self._rdp, delta)[0])

    accountant = OneRound()
    with _quiet_absl():
        accountant.compose(event, 1)
    return accountant


class PrivacyAccountant:
    """A ``RoundGuard``: reports ``epsilon`` and ``delta`` after each round and, with a
    ``budget`` > 0, stops the run before the round that would take ε above it.

    >>> guard = PrivacyAccountant(mode="central", noise_multiplier=1.0, sampling_probability=1.0,
    ...                           delta=1e-5, budget=10.0)
    >>> round(guard.epsilon(1), 2), guard.round_extras(2)["delta"]
    (4.73, 1e-05)
    """

    def __init__(self, *, mode: str, noise_multiplier: float, sampling_probability: float, delta: float,
                 budget: float = 0.0) -> None:
        if mode not in MODES:
            raise ConfigError(f"accountant: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(f"accountant: noise multiplier must be a finite number > 0, got {noise_multiplier!r}")
        if not 0 < sampling_probability <= 1:
            raise ConfigError(f"accountant: sampling probability must be in (0, 1], got {sampling_probability!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"accountant: delta must be in (0, 1), got {delta!r}")
        if not (budget >= 0 and math.isfinite(budget)):
            raise ConfigError(f"accountant: budget must be a finite number ≥ 0 (0: none), got {budget!r}")
        self.mode, self.noise_multiplier, self.q = mode, noise_multiplier, sampling_probability
        self.delta, self.budget = delta, budget
        self._accountant: Any = None  # built on first use: importing dp-accounting takes a second or two

    def epsilon(self, rounds: int) -> float:
        """ε spent after ``rounds`` rounds (0.0 for none)."""
        if rounds <= 0:
            return 0.0
        if self._accountant is None:
            self._accountant = round_accountant(dp_event(self.mode, self.noise_multiplier, self.q))
        return float(self._accountant.epsilon_after(rounds, self.delta))

    def before_round(self, rnd: int) -> None:
        """Raise :class:`BudgetExhausted` if ε after round ``rnd`` would exceed the budget."""
        if self.budget > 0 and self.epsilon(rnd) > self.budget:
            raise BudgetExhausted(
                f"privacy budget ε={self.budget:g} would be exceeded in round {rnd} "
                f"(ε would reach {self.epsilon(rnd):.3f}); stopping after round {rnd - 1}"
            )

    def round_extras(self, rnd: int) -> Mapping[str, float]:
        """``{"epsilon": ε after round rnd, "delta": δ}``."""
        return {"epsilon": self.epsilon(rnd), "delta": self.delta}
