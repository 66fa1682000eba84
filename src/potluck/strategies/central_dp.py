"""Server-side (central) differential privacy: DP-FedAvg around any averaging strategy.

:class:`ClippedNoisyMean` is the aggregation rule; :class:`CentralDP` composes it with
the server step of the strategy it wraps.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models"): each node's delta is clipped to ‖dᵢ‖₂ ≤ C, the clipped deltas are summed
without example weights, Gaussian noise N(0, (σ·C)²) is added to every value of the
sum, and the sum is divided by a FIXED denominator ``m``, the expected number of nodes
per round (not by how many arrived, nor by examples: either would let one node's data
change the scale). The inner strategy then takes its server step on that noisy mean
(FedAvg adds it; FedAvgM and the FedOpt family feed it to their optimizer), which is
post-processing and costs no privacy.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping") moves C each round toward the ``target_quantile`` γ of the update norms::

    b̄ = ½ + (Σᵢ (bᵢ − ½) + N(0, σ_b²)) / m          bᵢ = 1 if ‖dᵢ‖₂ ≤ C else 0
    C ← C · exp(−η · (b̄ − γ))

as in the authors' reference implementation (TensorFlow Privacy's quantile estimator:
centring bᵢ halves its sensitivity). The count's noise σ_b spends privacy too, so the
update noise is raised to σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), which keeps the round a
Gaussian mechanism with the configured σ (the paper's Theorem 1); that needs σ < 2σ_b.
σ_b defaults to the paper's m/20, raised to σ when that is smaller: with few nodes per
round m/20 would leave no room for σ, and σ_b = σ costs at most 15.5 % more update
noise (σ_Δ = σ/√0.75).

Noise is drawn from generators derived from (run seed, round), so a run and its resume
give the same digests. The strategy state adds ``dp/clip`` and ``dp/rounds`` (rounds
applied, which fixes the next round's generator) to the inner strategy's.

With ``clip=None`` and no noise this is only the unweighted sum over ``m``: the server
side of distributed DP, where nodes clip and noise (``local_dp.py``).

Integer arrays (counters such as ``num_batches_tracked``) are not clipped or noised;
they take the rounded plain mean of the arrived updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from potluck.core.errors import ConfigError, StrategyError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.core.seeds import rng_for
from potluck.strategies.aggregate import _check_weight
from potluck.strategies.base import AggregationRule, Aggregator, Strategy
from potluck.strategies.robust_rules import clip_to_norm

STATE_PREFIX = "dp/"
CLIP_LR = 0.2  # η of the geometric clip update (Andrew et al.'s default)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """σ_Δ for the update when the clip count is noised with ``count_stddev`` (σ_b).

    (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2) = σ: the round as a whole stays a Gaussian mechanism with
    ``noise_multiplier`` σ. Raises ``ConfigError`` unless σ < 2σ_b.

    >>> round(update_noise_multiplier(1.0, 1.0), 6)
    1.154701
    """
    if noise_multiplier >= 2 * count_stddev:
        raise ConfigError(
            f"adaptive clipping with noise multiplier {noise_multiplier:g}: the clip count's noise "
            f"σ_b = {count_stddev:g} must exceed half the noise multiplier"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def adaptive_clip(clip: float, unclipped: int, arrived: int, expected: float, target_quantile: float,
                  count_noise: float, lr: float = CLIP_LR) -> float:
    """The next clip norm: ``C · exp(−lr · (b̄ − γ))`` with
    ``b̄ = ½ + (unclipped − arrived/2 + count_noise) / expected``.

    ``unclipped`` of the ``arrived`` updates had a norm ≤ C; ``count_noise`` is the
    draw from N(0, σ_b²).
    """
    fraction = 0.5 + (unclipped - 0.5 * arrived + count_noise) / expected
    return clip * math.exp(-lr * (fraction - target_quantile))


class ClippedNoisySum:
    """Aggregator: Σ clip(dᵢ) + N(0, std²), divided by a fixed ``expected``; an ``Aggregator``.

    Streams in O(model) memory (float64 sums). ``weight`` is checked but not used.
    ``clip=None`` sums the updates as they are. :meth:`result` draws the noise once
    (from ``rng``) and returns the same Params on every later call.
    """

    def __init__(self, schema: tuple[SchemaEntry, ...], *, clip: float | None, std: float, expected: float,
                 rng: np.random.Generator) -> None:
        self._schema, self.clip, self.std, self.expected, self._rng = schema, clip, std, expected, rng
        self._sums = {name: np.zeros(shape, np.float64) for name, shape, _ in schema}
        self._count = 0
        self.unclipped = 0  # updates with a norm ≤ clip (all of them without a clip)
        self._result: Params | None = None

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: Params, weight: float) -> None:
        """Clip and fold in ``update``; raises like ``WeightedMean.add``, leaving the sum unchanged."""
        if self._result is not None:
            raise StrategyError("central dp: the noisy sum was already released for this round")
        if not isinstance(update, Params):
            raise StrategyError(f"update must be Params, got {type(update).__name__}")
        _check_weight(weight)
        update.check_schema(self._schema, what="update")
        update.check_finite(what="update")
        clipped = clip_to_norm(update, self.clip) if self.clip is not None else update
        self.unclipped += clipped is update  # clip_to_norm returns its input when it is within C
        update = clipped
        for name, total in self._sums.items():
            total += update[name]
        self._count += 1

    def result(self) -> Params:
        """The noisy mean as a DELTA in the updates' dtypes; raises ``StrategyError`` when empty."""
        if self._result is not None:
            return self._result
        if self._count == 0:
            raise StrategyError("central dp: no updates to aggregate")
        out: dict[str, np.ndarray] = {}
        for name, _, dtype_text in self._schema:
            dtype, total = np.dtype(dtype_text), self._sums[name]
            if dtype.kind == "f":
                noise = self._rng.normal(0.0, self.std, total.shape) if self.std > 0 else 0.0
                out[name] = ((total + noise) / self.expected).astype(dtype)
            else:
                out[name] = np.rint(total / self._count).astype(dtype)
        self._result = Params.from_arrays(out, ParamsKind.DELTA, copy=False)
        return self._result


class ClippedNoisyMean(AggregationRule):
    """The DP-FedAvg rule: clipped, noised, fixed-denominator mean (see the module docstring).

    Keeps the clip norm and the rounds applied as state (``dp/clip``, ``dp/rounds``);
    :meth:`end_round` counts the round and, when ``adaptive``, moves the clip norm.
    Arguments as :class:`CentralDP`'s.
    """

    name: ClassVar[str] = "central-dp"
    state_prefixes: ClassVar[tuple[str, ...]] = (STATE_PREFIX,)

    def __init__(self, *, expected_nodes: float, clip: float | None, noise_multiplier: float = 0.0,
                 seed: int = 0, adaptive: bool = False, target_quantile: float = 0.5,
                 count_stddev: float | None = None) -> None:
        super().__init__()
        _check_settings(expected_nodes, clip, noise_multiplier, adaptive, target_quantile)
        self.expected, self.seed = float(expected_nodes), seed
        self.noise_multiplier, self.adaptive, self.target_quantile = noise_multiplier, adaptive, target_quantile
        default_stddev = max(expected_nodes / 20, noise_multiplier)
        self.count_stddev = (default_stddev if count_stddev is None else count_stddev) if adaptive else 0.0
        self.update_multiplier = (update_noise_multiplier(noise_multiplier, self.count_stddev)
                                  if adaptive and noise_multiplier > 0 else noise_multiplier)
        self.clip = clip
        self.rounds = 0  # rounds applied so far
        self._last: ClippedNoisySum | None = None

    @property
    def needs_each_update(self) -> bool:
        """True when the server clips (central DP); False for distributed DP's plain sum."""
        return self.clip is not None

    def new_aggregator(self, global_params: Params) -> Aggregator:
        rnd = self.rounds + 1
        std = self.update_multiplier * self.clip if self.clip is not None else 0.0
        self._last = ClippedNoisySum(global_params.schema, clip=self.clip, std=std, expected=self.expected,
                                     rng=rng_for(self.seed, "central-dp", "noise", rnd))
        return self._last

    def end_round(self) -> None:
        """Count the round; with adaptive clipping, move C from this round's count."""
        self.rounds += 1
        last = self._last
        if self.adaptive and last is not None and last.count and self.clip is not None:
            noise = float(rng_for(self.seed, "central-dp", "count", self.rounds).normal(0.0, self.count_stddev))
            self.clip = adaptive_clip(self.clip, last.unclipped, last.count, self.expected, self.target_quantile, noise)
        self._last = None

    def state(self) -> dict[str, np.ndarray]:
        """``dp/rounds`` and ``dp/clip`` (NaN without a clip)."""
        own = {
            STATE_PREFIX + "rounds": np.array([self.rounds], np.float64),
            STATE_PREFIX + "clip": np.array([math.nan if self.clip is None else self.clip], np.float64),
        }
        for arr in own.values():
            arr.setflags(write=False)
        return own

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state`; anything but exactly ``dp/rounds`` and ``dp/clip`` is refused."""
        own = {k[len(STATE_PREFIX):]: v for k, v in state.items()}
        if set(own) != {"rounds", "clip"}:
            raise StrategyError(f"central dp: state needs dp/rounds and dp/clip, got {sorted(state)}")
        rounds, clip = (float(np.asarray(own[k]).reshape(-1)[0]) for k in ("rounds", "clip"))
        if not (rounds >= 0 and rounds == int(rounds)):
            raise StrategyError(f"central dp: dp/rounds must be a whole number ≥ 0, got {rounds!r}")
        if self.clip is not None and not (clip > 0 and math.isfinite(clip)):
            raise StrategyError(f"central dp: dp/clip must be a finite number > 0, got {clip!r}")
        self.rounds = int(rounds)
        self.clip = clip if self.clip is not None else None


def _check_settings(expected_nodes: float, clip: float | None, noise_multiplier: float, adaptive: bool,
                    target_quantile: float) -> None:
    if not (expected_nodes > 0 and math.isfinite(expected_nodes)):
        raise ConfigError(f"central dp: expected nodes per round must be > 0, got {expected_nodes!r}")
    if clip is not None and not (clip > 0 and math.isfinite(clip)):
        raise ConfigError(f"central dp: clip must be a finite number > 0, got {clip!r}")
    if noise_multiplier < 0 or (noise_multiplier > 0 and clip is None):
        raise ConfigError("central dp: noise needs a clip norm and a noise multiplier ≥ 0")
    if adaptive and (clip is None or not 0 < target_quantile < 1):
        raise ConfigError(f"central dp: adaptive clipping needs a clip and a target quantile in (0, 1), "
                          f"got {target_quantile!r}")


class CentralDP(Strategy):
    """DP-FedAvg around ``inner``: the :class:`ClippedNoisyMean` rule, then ``inner``'s step.

    Args:
        inner: a strategy whose rule is the weighted mean (FedAvg, FedAvgM, FedProx,
            FedAdam, ... or their ``--server-opt`` variants); its rule is replaced, its
            ``fit_config``, server step and step state are kept. A rule that must see
            each update (median, Krum, ...) is refused with ``ConfigError``.
        expected_nodes: m, the fixed denominator (nodes sampled per round).
        clip: the initial clip norm C; ``None``: updates arrive clipped (distributed DP).
        noise_multiplier: σ; the sum gets N(0, (σ·C)²) per value (0: no server noise).
        seed: the run seed; round r draws from ``rng_for(seed, "central-dp", ..., r)``.
        adaptive: move C toward ``target_quantile`` of the norms each round.
        count_stddev: σ_b of the adaptive count (default max(m/20, σ)).
    """

    name = "central-dp"

    def __init__(self, inner: Strategy, *, expected_nodes: float, clip: float | None, noise_multiplier: float = 0.0,
                 seed: int = 0, adaptive: bool = False, target_quantile: float = 0.5,
                 count_stddev: float | None = None) -> None:
        if inner.needs_each_update:
            raise ConfigError(f"dp averages clipped updates itself and cannot be combined with strategy "
                              f"{inner.name}, whose rule {inner.rule.name} must see each update")
        self.dp = ClippedNoisyMean(expected_nodes=expected_nodes, clip=clip, noise_multiplier=noise_multiplier,
                                   seed=seed, adaptive=adaptive, target_quantile=target_quantile,
                                   count_stddev=count_stddev)
        super().__init__(self.dp, inner.step)
        self.inner = inner

    def fit_config(self, round: int) -> dict[str, Scalar]:
        return self.inner.fit_config(round)

    @property
    def clip(self) -> float | None:
        """The current clip norm C (None: distributed DP)."""
        return self.dp.clip

    @property
    def rounds(self) -> int:
        """Rounds applied so far."""
        return self.dp.rounds

    @property
    def expected(self) -> float:
        """m, the fixed denominator."""
        return self.dp.expected

    @property
    def count_stddev(self) -> float:
        """σ_b of the adaptive clip count (0 without adaptive clipping)."""
        return self.dp.count_stddev

    @property
    def update_multiplier(self) -> float:
        """σ_Δ, the noise multiplier of the update sum."""
        return self.dp.update_multiplier
