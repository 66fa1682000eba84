"""A run's optional protections, built from its settings the same way for every command.

Node-side update stages (clipping, noise, compression, masking; see
``updates/pipeline.py``) and round guards (budgets that end a run cleanly; see
``runtime/coordinator.RoundGuard``). ``potluck simulate`` and ``potluck server`` both
build theirs here, so a setting means the same thing in simulation and deployment.
Each kind of protection contributes through its own function below.
"""

from __future__ import annotations

from potluck.core.config import ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError
from potluck.runtime.coordinator import RoundGuard, sample_size
from potluck.runtime.secure import SecureAggregation
from potluck.strategies.accountant import PrivacyAccountant
from potluck.strategies.base import Strategy
from potluck.strategies.central_dp import CentralDP
from potluck.strategies.presets import ROBUST_STRATEGIES
from potluck.updates.local_dp import GaussianDP
from potluck.updates.pipeline import UpdatePipeline, UpdateStage
from potluck.updates.quantize import Quantize
from potluck.updates.topk import TopK

RunConfig = SimulationConfig | ServerConfig  # the commands that run rounds


def update_pipeline(config: RunConfig) -> UpdatePipeline:
    """The stages nodes apply to their updates, in order: privacy first, then compression."""
    stages: list[UpdateStage] = [*_privacy_stages(config), *_compression_stages(config)]
    secure = secure_aggregation(config)
    if secure is not None:
        stages.append(secure.stage)  # masking is last: nothing can be done to a masked update but add it
    return UpdatePipeline(stages)


def secure_aggregation(config: RunConfig) -> SecureAggregation | None:
    """``secagg = true`` (docs/secure-aggregation.md): the coordinator's driver, or None.

    Refuses (ConfigError) robust strategies, which must see each update; with ``dp =
    distributed`` the sum is divided by the expected nodes per round, as CentralDP would."""
    if not config.secagg:
        return None
    if config.strategy in {cls.name for cls in ROBUST_STRATEGIES}:
        raise ConfigError(f"secagg = true hides each update from the server, so strategy {config.strategy}, which "
                          "must inspect every update, cannot run; use fedavg, fedavgm, fedprox or the FedOpt family")
    denominator = float(_dp_nodes_per_round(config)) if config.dp == "distributed" else None
    return SecureAggregation(degree=config.secagg_neighbours, threshold=config.secagg_threshold,
                             clip=config.secagg_clip, bits=config.secagg_bits, seed=config.seed,
                             denominator=denominator)


def round_guards(config: RunConfig) -> list[RoundGuard]:
    """Guards checked before every round (e.g. the privacy budget)."""
    return [*_privacy_guards(config)]


def protect_strategy(config: RunConfig, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped for differential privacy (docs/privacy.md), or itself.

    ``dp = central``: the server clips, sums without example weights, adds noise and
    divides by the expected nodes per round (DP-FedAvg). ``dp = distributed``: nodes
    clip and noise, the server only sums over the same fixed denominator. The wrapped
    strategy's server step (FedAvgM's momentum, FedAdam's moments) still applies.
    """
    if getattr(config, "secagg", False) and strategy.needs_each_update:  # module:attr ones too, not only by name
        raise ConfigError(f"secagg = true hides each update from the server, so strategy {strategy.name}, whose rule "
                          f"{strategy.rule.name} must inspect every update, cannot run")
    mode = config.dp
    if mode not in ("central", "distributed"):
        return strategy
    if strategy.needs_each_update:
        raise ConfigError(f"dp = {mode} averages clipped updates itself and cannot be combined with strategy "
                          f"{strategy.name}; use fedavg, fedavgm, fedprox, fedadam, fedyogi or fedadagrad")
    if mode == "distributed":
        return CentralDP(strategy, expected_nodes=_dp_nodes_per_round(config), clip=None, seed=config.seed)
    return CentralDP(strategy, expected_nodes=_dp_nodes_per_round(config), clip=config.dp_clip,
                     noise_multiplier=config.dp_noise_multiplier, seed=config.seed,
                     adaptive=config.dp_adaptive_clip, target_quantile=config.dp_target_quantile)


def _dp_population(config: RunConfig) -> int:
    """Nodes in the federation: ``nodes`` (simulate), else ``dp_nodes`` or ``min_nodes`` (server)."""
    return config.population()


def _dp_nodes_per_round(config: RunConfig) -> int:
    """Nodes sampled per round, as the coordinator samples them from the whole federation."""
    return sample_size(config.fraction, _dp_population(config), config.min_nodes)


def _privacy_stages(config: RunConfig) -> list[UpdateStage]:
    """``dp = local | distributed``: nodes clip their delta and add noise, before compression."""
    mode = config.dp
    if mode not in ("local", "distributed"):
        return []
    return [GaussianDP(mode, clip=config.dp_clip, noise_multiplier=config.dp_noise_multiplier,
                       nodes=_dp_nodes_per_round(config))]


def _privacy_guards(config: RunConfig) -> list[RoundGuard]:
    """With ``dp`` set: the accountant, reporting ε each round and stopping at ``dp_epsilon_budget``."""
    mode = config.dp
    if mode == "none":
        return []
    q = _dp_nodes_per_round(config) / _dp_population(config)
    return [PrivacyAccountant(mode=mode, noise_multiplier=config.dp_noise_multiplier, sampling_probability=q,
                              delta=config.dp_delta, budget=config.dp_epsilon_budget)]


def _compression_stages(config: RunConfig) -> list[UpdateStage]:
    """``compression`` (docs/compression.md): quantise, sparsify, or sparsify and quantise
    the kept values; always last, so clipping and noise see the full update."""
    kind = config.compression
    if kind == "quantize":
        return [Quantize(config.compression_bits)]
    if kind == "topk":
        return [TopK(config.compression_ratio)]
    if kind == "topk+quantize":
        return [TopK(config.compression_ratio, bits=config.compression_bits)]
    return []
