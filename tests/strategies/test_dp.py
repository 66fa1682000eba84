"""Differential privacy: node-side clip + noise, server-side DP-FedAvg, adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import ConfigError, NonFiniteError, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.core.seeds import rng_for
from potluck.strategies import FedAvg, FedAvgM
from potluck.strategies.central_dp import CentralDP, adaptive_clip, update_noise_multiplier
from potluck.updates.local_dp import GaussianDP
from potluck.updates.pipeline import UpdatePipeline

GLOBAL = Params.from_arrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32),
                             "steps": np.zeros((), np.int64)})


def delta(w, b, steps=1) -> Params:
    return Params.from_arrays({"w": np.asarray(w, np.float32).reshape(3, 2), "b": np.asarray(b, np.float32),
                               "steps": np.asarray(steps, np.int64)}, ParamsKind.DELTA)


def clipped_oracle(update: Params, clip: float) -> dict[str, np.ndarray]:
    """numpy: scale the float arrays by min(1, C/‖d‖₂), the norm over float arrays in float64."""
    floats = [update[n].astype(np.float64).ravel() for n in ("w", "b")]
    norm = math.sqrt(sum(float(f @ f) for f in floats))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {n: (update[n].astype(np.float64) * scale).astype(np.float32) if scale < 1 else update[n] for n in ("w", "b")}


# -- local / distributed: the node-side stage -------------------------------------------


@pytest.mark.parametrize(("mode", "std"), [("local", 0.5 * 2.0), ("distributed", 0.5 * 2.0 / math.sqrt(4))])
def test_node_stage_clips_then_adds_the_noise_numpy_draws_with_the_same_seed(mode, std):
    update = delta(np.arange(6) * 3.0, [4.0, -4.0], steps=7)  # ‖d‖ ≫ C
    stage = GaussianDP(mode, clip=2.0, noise_multiplier=0.5, nodes=4)
    assert stage.node_std == pytest.approx(std)
    out = stage.encode(update, {}, np.random.default_rng(11))

    rng = np.random.default_rng(11)
    clipped = clipped_oracle(update, 2.0)
    for name in ("w", "b"):  # noise drawn array by array, in the update's order
        expected = (clipped[name].astype(np.float64) + rng.normal(0.0, std, clipped[name].shape)).astype(np.float32)
        np.testing.assert_array_equal(out[name], expected)
    assert out["steps"] == 7 and out["steps"].dtype == np.int64  # integer arrays pass unchanged
    assert out.kind is ParamsKind.DELTA and out.schema == update.schema


def test_node_stage_noise_has_the_configured_std():
    zero = Params.from_arrays({"w": np.zeros(200_000, np.float32)}, ParamsKind.DELTA)
    for mode, want in (("local", 0.8 * 1.5), ("distributed", 0.8 * 1.5 / math.sqrt(9))):
        out = GaussianDP(mode, clip=1.5, noise_multiplier=0.8, nodes=9).encode(zero, {}, np.random.default_rng(0))
        assert np.std(out["w"]) == pytest.approx(want, rel=0.01)
        assert abs(np.mean(out["w"])) < 4 * want / math.sqrt(200_000)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-3])
def test_zero_and_tiny_updates_are_not_scaled_and_stay_finite(scale):
    update = delta(np.full(6, scale), [scale, 0.0])
    out = GaussianDP("local", clip=1.0, noise_multiplier=1e-6, nodes=1).encode(update, {}, np.random.default_rng(1))
    assert all(np.isfinite(out[n]).all() for n in ("w", "b"))
    np.testing.assert_allclose(out["w"], update["w"], atol=1e-5)  # not blown up by a 1/‖d‖


def test_node_stage_travels_in_the_fit_config_and_checks_its_options():
    stage = GaussianDP("distributed", clip=0.7, noise_multiplier=1.2, nodes=5)
    config = {"lr": 0.1, **UpdatePipeline([stage]).to_config()}
    pipeline, rest = UpdatePipeline.from_config(config)
    (rebuilt,) = pipeline.stages
    assert rest == {"lr": 0.1} and rebuilt.settings() == stage.settings()
    with pytest.raises(ConfigError, match="mode"):
        UpdatePipeline.from_config({**config, "update.dp.mode": "global"})
    with pytest.raises(ConfigError, match="'nodes' is missing"):
        UpdatePipeline.from_config({k: v for k, v in config.items() if k != "update.dp.nodes"})
    with pytest.raises(ConfigError, match="> 0"):
        GaussianDP("local", clip=0.0, noise_multiplier=1.0)


# -- central: DP-FedAvg on the server ---------------------------------------------------


def central(**kw) -> CentralDP:
    return CentralDP(kw.pop("inner", FedAvg()), **{"expected_nodes": 4, "clip": 1.0, "noise_multiplier": 0.5,
                                                   "seed": 3, **kw})


def test_central_sum_is_clipped_unweighted_noised_and_divided_by_the_expected_nodes():
    updates = [delta(np.ones(6), [1.0, 1.0], 2), delta(np.full(6, 0.1), [0.0, 0.0], 4), delta(np.zeros(6), [0, 0], 0)]
    strategy = central()
    agg = strategy.new_aggregator(GLOBAL)
    for update, examples in zip(updates, (10.0, 1000.0, 3.0)):  # example counts must not matter
        agg.add(update, examples)
    out = agg.result()

    rng = rng_for(3, "central-dp", "noise", 1)
    for name in ("w", "b"):
        total = sum(clipped_oracle(u, 1.0)[name].astype(np.float64) for u in updates)
        expected = ((total + rng.normal(0.0, 0.5 * 1.0, total.shape)) / 4).astype(np.float32)
        np.testing.assert_allclose(out[name], expected, rtol=1e-6, atol=1e-7)
    assert out["steps"] == 2  # integer arrays: the rounded plain mean, no noise
    assert agg.count == 3 and agg.unclipped == 2  # the zero update is within C (no division by zero)
    assert agg.result() is out  # the noise is drawn once


def test_central_noise_on_the_sum_has_std_sigma_c():
    big = Params.from_arrays({"w": np.zeros(100_000, np.float32)})
    agg = central(clip=2.0, noise_multiplier=0.7, expected_nodes=5).new_aggregator(big)
    agg.add(big.with_kind(ParamsKind.DELTA), 1.0)
    assert np.std(agg.result()["w"] * 5) == pytest.approx(0.7 * 2.0, rel=0.01)


def test_central_rejects_bad_updates_and_an_empty_round():
    agg = central().new_aggregator(GLOBAL)
    with pytest.raises(StrategyError, match="no updates"):
        agg.result()
    with pytest.raises(NonFiniteError, match="'w' holds 6 NaN/Inf values"):
        agg.add(delta(np.full(6, np.nan), [0, 0]), 1.0)
    assert agg.count == 0


def test_adaptive_clip_update_by_hand():
    # 3 of 4 updates within C; b̄ = ½ + (3 − 4/2 + 0.2)/4 = 0.8; C ← 1.0 · exp(−0.2 · (0.8 − 0.5))
    assert adaptive_clip(1.0, unclipped=3, arrived=4, expected=4, target_quantile=0.5, count_noise=0.2) == \
        pytest.approx(math.exp(-0.06))
    assert adaptive_clip(2.0, 0, 4, 4, 0.5, 0.0) == pytest.approx(2.0 * math.exp(0.1))  # all clipped: C grows
    # Andrew et al.: σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), σ = 1, σ_b = 1 → 1/√0.75
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(1 / math.sqrt(0.75))
    with pytest.raises(ConfigError, match="must exceed half the noise multiplier"):
        update_noise_multiplier(1.0, 0.5)


def test_adaptive_strategy_moves_the_clip_with_the_seeded_count_noise_and_uses_sigma_delta():
    strategy = central(expected_nodes=20, noise_multiplier=0.5, adaptive=True, target_quantile=0.5)
    assert CentralDP(FedAvg(), expected_nodes=5, clip=1.0, noise_multiplier=0.8, adaptive=True).count_stddev == 0.8
    assert strategy.count_stddev == 1.0 and strategy.update_multiplier == pytest.approx(update_noise_multiplier(0.5, 1.0))
    agg = strategy.new_aggregator(GLOBAL)
    assert agg.std == pytest.approx(strategy.update_multiplier * 1.0)
    for norm in (0.1, 0.2, 5.0):  # two within C = 1, one clipped
        agg.add(delta(np.full(6, norm / math.sqrt(6)), [0, 0]), 1.0)
    strategy.apply(GLOBAL, agg.result())
    noise = rng_for(3, "central-dp", "count", 1).normal(0.0, 1.0)
    assert strategy.clip == pytest.approx(adaptive_clip(1.0, 2, 3, 20, 0.5, noise))
    assert strategy.rounds == 1


def test_state_round_trip_gives_the_same_next_round_as_an_uninterrupted_strategy():
    def one_round(strategy, params):
        agg = strategy.new_aggregator(params)
        agg.add(delta(np.linspace(-1, 1, 6), [0.5, 2.0]), 1.0)
        return strategy.apply(params, agg.result())

    whole = central(inner=FedAvgM(momentum=0.5), expected_nodes=20, adaptive=True)
    params = one_round(whole, GLOBAL)
    saved = whole.state()
    assert {"dp/clip", "dp/rounds"} <= set(saved) and any(k.startswith("momentum/") for k in saved)
    resumed = central(inner=FedAvgM(momentum=0.5), expected_nodes=20, adaptive=True)
    resumed.load_state(saved)
    assert (resumed.rounds, resumed.clip) == (1, whole.clip)
    assert one_round(resumed, params).digest == one_round(whole, params).digest
    with pytest.raises(StrategyError, match="dp/rounds"):
        central().load_state({})


def test_inner_server_step_applies_after_the_noise():
    strategy = central(inner=FedAvg(server_lr=0.5), noise_multiplier=0.0, clip=10.0, expected_nodes=1)
    agg = strategy.new_aggregator(GLOBAL)
    agg.add(delta(np.ones(6), [2.0, 2.0], 0), 1.0)
    out = strategy.apply(GLOBAL, agg.result())
    np.testing.assert_array_equal(out["b"], [1.0, 1.0])


def test_distributed_server_side_only_sums_over_the_fixed_denominator():
    strategy = CentralDP(FedAvg(), expected_nodes=4, clip=None)
    agg = strategy.new_aggregator(GLOBAL)
    for b in (1.0, 3.0):
        agg.add(delta(np.zeros(6), [b, 100.0]), 50.0)
    np.testing.assert_array_equal(agg.result()["b"], [1.0, 50.0])  # (1 + 3)/4 and (100 + 100)/4: no clip, no weights
