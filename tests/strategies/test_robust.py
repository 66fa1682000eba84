"""Median, trimmed mean, Krum, Multi-Krum and norm bounding against numpy oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import ConfigError, NonFiniteError, SchemaMismatch, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import make_strategy, strategy_options, weighted_mean
from potluck.strategies.presets import ROBUST_STRATEGIES
from potluck.strategies.robust_rules import (
    clip_to_norm,
    coordinate_median,
    krum_scores,
    krum_select,
    l2_norm,
    trimmed_mean,
)
from potluck.strategies.rules import MultiKrumRule

SHAPES = {"fc.weight": (4, 3), "fc.bias": (3,), "gain": ()}
NAMES = [cls.name for cls in ROBUST_STRATEGIES]


def make_params(rng: np.random.Generator, kind: ParamsKind = ParamsKind.DELTA, scale: float = 1.0) -> Params:
    arrays: dict[str, np.ndarray] = {n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}
    arrays["bn.num_batches_tracked"] = np.array(rng.integers(0, 40), np.int64)
    return Params.from_arrays(arrays, kind)


def one_d(*values: float) -> list[Params]:
    return [Params.from_arrays({"w": np.array([v], np.float64)}, ParamsKind.DELTA) for v in values]


def stacked(updates: list[Params], name: str) -> np.ndarray:
    return np.stack([u[name].astype(np.float64) for u in updates])


def flat(update: Params) -> np.ndarray:
    """Float arrays end to end, in float64 (what distances and norms are taken over)."""
    return np.concatenate([a.astype(np.float64).ravel() for a in update.values() if a.dtype.kind == "f"])


def run_round(strategy, global_params: Params, updates: list[Params], weights: list[float]) -> Params:
    agg = strategy.new_aggregator(global_params)
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return strategy.apply(global_params, agg.result())


def check_full(got: Params, global_params: Params, want_delta: dict[str, np.ndarray]) -> None:
    assert got.kind is ParamsKind.FULL and got.schema == global_params.schema
    for name, x in global_params.items():
        if x.dtype.kind != "f":
            np.testing.assert_array_equal(got[name], x + np.rint(want_delta[name]).astype(x.dtype), err_msg=name)
        else:
            np.testing.assert_allclose(got[name], x + want_delta[name], rtol=1e-5, atol=1e-6, err_msg=name)


# -- a 1-D example computed by hand ------------------------------------------------------
#
# updates 0, 1, 3, 4, 20 with f = 1: each score sums the n − f − 2 = 2 smallest squared
# distances to the others:
#   0: {1, 9, 16, 400} → 10     1: {1, 4, 9, 361} → 5      3: {9, 4, 1, 289} → 5
#   4: {16, 9, 1, 256} → 10    20: {400, 361, 289, 256} → 545

HAND = one_d(0.0, 1.0, 3.0, 4.0, 20.0)
HAND_WEIGHTS = [1.0, 2.0, 1.0, 4.0, 8.0]


def test_hand_computed_krum_scores_and_selection():
    assert krum_scores(HAND, byzantine=1).tolist() == [10.0, 5.0, 5.0, 10.0, 545.0]
    assert krum_select(HAND, 1) == [1]  # tie 1 vs 3: the earlier update wins
    assert krum_select(HAND, 1, select=3) == [0, 1, 2]  # tie 0 vs 4 at 10: the earlier wins
    assert krum_select(HAND, 1, select=4) == [0, 1, 2, 3]


def test_hand_computed_strategies():
    x = Params.from_arrays({"w": np.array([10.0])})
    expect = {
        ("krum", ()): 11.0,  # picks update 1
        ("multi-krum", ()): 10 + (0 * 1 + 1 * 2 + 3 * 1 + 4 * 4) / 8,  # select 0 → n − f = 4 kept: 12.625
        ("multi-krum", (("select", 3),)): 10 + (0 * 1 + 1 * 2 + 3 * 1) / 4,  # 11.25
        ("median", ()): 13.0,
        ("trimmed-mean", (("trim", 0.2),)): 10 + 8 / 3,  # ⌊0.2·5⌋ = 1 dropped each end: mean(1, 3, 4)
        ("trimmed-mean", (("trim", 0.0),)): 10 + 28 / 5,
        ("norm-bound", (("max_norm", 2.0),)): 10 + (0 + 1 * 2 + 2 * 1 + 2 * 4 + 2 * 8) / 16,  # 11.75
    }
    for (name, options), want in expect.items():
        strategy = make_strategy(name, dict(options, byzantine=1) if "krum" in name else dict(options))
        got = run_round(strategy, x, HAND, HAND_WEIGHTS)["w"][0]
        assert got == pytest.approx(want, rel=1e-15), (name, options)
    assert run_round(make_strategy("median", {"server_lr": 0.5}), x, HAND, HAND_WEIGHTS)["w"][0] == 11.5
    assert run_round(make_strategy("krum", {"byzantine": 1}), x, HAND, HAND_WEIGHTS)["w"][0] == 11.0  # exact


# -- against numpy oracles -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_median_matches_np_median(n: int):
    rng = np.random.default_rng(n)
    updates = [make_params(rng) for _ in range(n)]
    got = coordinate_median(updates)
    assert got.kind is ParamsKind.DELTA and got.schema == updates[0].schema
    for name in SHAPES:
        np.testing.assert_allclose(got[name], np.median(stacked(updates, name), axis=0), rtol=1e-6, err_msg=name)
    counter = np.median(stacked(updates, "bn.num_batches_tracked"))
    assert got["bn.num_batches_tracked"] == np.rint(counter)
    g = make_params(rng, ParamsKind.FULL)
    want = {name: np.median(stacked(updates, name), axis=0) for name in g}
    check_full(run_round(make_strategy("median"), g, updates, [float(i + 1) for i in range(n)]), g, want)


def trimmed_oracle(values: np.ndarray, beta: float) -> np.ndarray:
    n = values.shape[0]
    k = int(np.floor(beta * n + 1e-9))
    return np.sort(values, axis=0)[k : n - k].mean(axis=0)


@pytest.mark.parametrize(("n", "beta"), [(1, 0.3), (4, 0.0), (5, 0.2), (10, 0.1), (10, 0.3), (9, 0.49)])
def test_trimmed_mean_matches_a_sort_oracle(n: int, beta: float):
    rng = np.random.default_rng(100 + n)
    updates = [make_params(rng) for _ in range(n)]
    got = trimmed_mean(updates, beta)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], trimmed_oracle(stacked(updates, name), beta), rtol=1e-5, atol=1e-7)
    g = make_params(rng, ParamsKind.FULL)
    want = {name: trimmed_oracle(stacked(updates, name), beta) for name in g}
    check_full(run_round(make_strategy("trimmed-mean", {"trim": beta}), g, updates, [1.0] * n), g, want)


def test_trimmed_mean_with_no_trim_is_the_unweighted_mean_and_weights_are_ignored():
    rng = np.random.default_rng(7)
    updates = [make_params(rng) for _ in range(6)]
    g = make_params(rng, ParamsKind.FULL)
    strategy = make_strategy("trimmed-mean", {"trim": 0})
    a = run_round(strategy, g, updates, [1.0] * 6)
    b = run_round(strategy, g, updates, [1.0, 50.0, 2.0, 3.0, 1e6, 0.5])
    assert a.digest == b.digest
    np.testing.assert_allclose(a["fc.weight"], g["fc.weight"] + stacked(updates, "fc.weight").mean(0), rtol=1e-5)


def krum_oracle(updates: list[Params], f: int) -> np.ndarray:
    """Brute force: every pair's distance from the flattened float arrays."""
    vecs = [flat(u) for u in updates]
    n = len(vecs)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((vecs[i] - vecs[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


@pytest.mark.parametrize(("n", "f"), [(3, 0), (6, 1), (9, 2), (12, 3)])
def test_krum_scores_match_brute_force(n: int, f: int):
    rng = np.random.default_rng(n * 10 + f)
    updates = [make_params(rng) for _ in range(n - f)] + [make_params(rng, scale=30.0) for _ in range(f)]
    order = rng.permutation(n)
    updates = [updates[i] for i in order]
    want = krum_oracle(updates, f)
    np.testing.assert_allclose(krum_scores(updates, f), want, rtol=1e-12)
    honest = sorted(int(i) for i in np.flatnonzero(order < n - f))
    assert krum_select(updates, f, n - f) == honest  # the scaled ones score worst
    (best,) = krum_select(updates, f)
    assert best == int(np.argmin(want))
    g = make_params(rng, ParamsKind.FULL)
    krum = run_round(make_strategy("krum", {"byzantine": f}), g, updates, [1.0] * n)
    check_full(krum, g, {name: updates[best][name].astype(np.float64) for name in g})
    weights = [float(w) for w in rng.integers(1, 50, n)]
    multi = run_round(make_strategy("multi-krum", {"byzantine": f}), g, updates, weights)
    want_mean = {
        name: np.average(stacked([updates[i] for i in honest], name), axis=0, weights=[weights[i] for i in honest])
        for name in g
    }
    check_full(multi, g, want_mean)


def test_multi_krum_keeping_everything_is_fedavg_bit_for_bit():
    rng = np.random.default_rng(3)
    updates = [make_params(rng) for _ in range(5)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    g = make_params(rng, ParamsKind.FULL)
    multi = run_round(make_strategy("multi-krum", {"byzantine": 0, "select": 5}), g, updates, weights)
    fedavg = run_round(make_strategy("fedavg"), g, updates, weights)
    assert multi.digest == fedavg.digest
    one = run_round(make_strategy("multi-krum", {"byzantine": 1, "select": 1}), g, updates, weights)
    assert one.digest == run_round(make_strategy("krum", {"byzantine": 1}), g, updates, weights).digest


def test_norm_bound_matches_clip_then_weighted_mean():
    rng = np.random.default_rng(11)
    updates = [make_params(rng, scale=s) for s in (0.01, 0.3, 1.0, 50.0)] + [make_params(rng) for _ in range(2)]
    weights = [float(w) for w in rng.integers(1, 30, len(updates))]
    bound = 1.5
    g = make_params(rng, ParamsKind.FULL)
    want: dict[str, np.ndarray] = {}
    for name in g:
        rows = []
        for u in updates:
            norm = np.linalg.norm(flat(u))
            factor = min(1.0, bound / norm) if name in SHAPES else 1.0
            rows.append(u[name].astype(np.float64) * factor)
        want[name] = np.average(np.stack(rows), axis=0, weights=weights)
    got = run_round(make_strategy("norm-bound", {"max_norm": bound}), g, updates, weights)
    check_full(got, g, want)


def test_clip_to_norm_edge_cases():
    zero = Params.from_arrays({"w": np.zeros(3, np.float32), "n": np.array(5)}, ParamsKind.DELTA)
    assert clip_to_norm(zero, 1.0) is zero  # a zero norm is within any bound: no division
    big = Params.from_arrays({"w": np.array([3.0, 4.0]), "n": np.array(500)}, ParamsKind.DELTA)
    clipped = clip_to_norm(big, 1.0)
    assert clipped["w"].tolist() == pytest.approx([0.6, 0.8]) and clipped["n"] == 500 and clipped.kind is ParamsKind.DELTA
    assert l2_norm(big) == 5.0 and l2_norm(clipped) == pytest.approx(1.0)
    assert clip_to_norm(big, 5.0) is big
    with pytest.raises(StrategyError, match="max_norm"):
        clip_to_norm(big, 0.0)


def test_scaled_outliers_move_the_robust_rules_little():
    """4 of 20 updates scaled ×100: the mean follows them; the robust rules do not."""
    rng = np.random.default_rng(5)
    honest = [make_params(rng) for _ in range(16)]
    attackers = [Params.from_arrays({k: v * 100 for k, v in u.items()}, ParamsKind.DELTA) for u in honest[:4]]
    updates = attackers + honest
    target = {name: stacked(honest, name).mean(0) for name in SHAPES}

    def error(p: Params) -> float:
        return max(float(np.abs(p[name] - target[name]).max()) for name in SHAPES)

    assert error(weighted_mean(updates, [1.0] * 20)) > 5
    assert error(trimmed_mean(updates, 0.2)) < 1
    assert error(coordinate_median(updates)) < 1
    kept = krum_select(updates, 4, 16)
    assert kept == list(range(4, 20))


# -- the Aggregator contract ------------------------------------------------------------------


def _strategy(name: str):
    return make_strategy(name, {"byzantine": 0} if "krum" in name else {})


@pytest.mark.parametrize("name", NAMES)
def test_bad_updates_raise_and_change_nothing(name: str):
    rng = np.random.default_rng(1)
    g = make_params(rng, ParamsKind.FULL)
    updates = [make_params(rng) for _ in range(3)]
    clean = _strategy(name).new_aggregator(g)
    agg = _strategy(name).new_aggregator(g)
    for u in updates:
        clean.add(u, 2.0)
        agg.add(u, 2.0)
    nan = dict(updates[0].items())
    nan["fc.bias"] = np.array([0.0, np.nan, 1.0], np.float32)
    wrong_shape = dict(updates[0].items())
    wrong_shape["fc.bias"] = np.zeros(4, np.float32)
    bad = [
        (Params.from_arrays(nan, ParamsKind.DELTA), 1.0, NonFiniteError),
        (Params.from_arrays(wrong_shape, ParamsKind.DELTA), 1.0, SchemaMismatch),
        (Params.from_arrays({"other": np.zeros(2)}, ParamsKind.DELTA), 1.0, SchemaMismatch),
        (updates[0], 0.0, StrategyError),
        (updates[0], -1.0, StrategyError),
        (updates[0], math.nan, StrategyError),
        (updates[0], math.inf, StrategyError),
        (updates[0], True, StrategyError),
        ({"fc.bias": np.zeros(3)}, 1.0, StrategyError),
    ]
    for update, weight, error in bad:
        with pytest.raises(error):
            agg.add(update, weight)  # type: ignore[arg-type]
        assert agg.count == 3
    assert agg.result().digest == clean.result().digest


@pytest.mark.parametrize("name", NAMES)
def test_result_without_updates_is_an_error(name: str):
    g = make_params(np.random.default_rng(0), ParamsKind.FULL)
    agg = _strategy(name).new_aggregator(g)
    assert agg.count == 0
    with pytest.raises(StrategyError, match="no updates"):
        agg.result()


def test_krum_needs_more_than_2f_plus_2_updates():
    g = Params.from_arrays({"w": np.array([0.0])})
    for name in ("krum", "multi-krum"):
        agg = make_strategy(name, {"byzantine": 2}).new_aggregator(g)
        for u in one_d(1, 2, 3, 4, 5, 6):
            agg.add(u, 1.0)
        with pytest.raises(StrategyError, match=rf"^{name}: with byzantine = f = 2 it needs more than 2f \+ 2 = 6 "
                                                r"updates, got 6$"):
            agg.result()
        agg.add(one_d(7)[0], 1.0)
        agg.result()
    with pytest.raises(StrategyError, match="more than 2f"):
        krum_scores(one_d(1, 2), 0)


def test_multi_krum_select_larger_than_the_round_is_an_error():
    g = Params.from_arrays({"w": np.array([0.0])})
    agg = make_strategy("multi-krum", {"byzantine": 1, "select": 6}).new_aggregator(g)
    for u in one_d(1, 2, 3, 4, 5):
        agg.add(u, 1.0)
    with pytest.raises(StrategyError, match="multi-krum: select = 6 but only 5 updates arrived"):
        agg.result()


def test_rules_do_not_accept_mixed_schemas_or_nothing():
    with pytest.raises(StrategyError, match="at least 1"):
        coordinate_median([])
    with pytest.raises(SchemaMismatch):
        trimmed_mean(one_d(1.0) + [Params.from_arrays({"v": [1.0]}, ParamsKind.DELTA)], 0.1)
    with pytest.raises(StrategyError, match=r"trim must be in \[0, 0.5\)"):
        trimmed_mean(one_d(1.0), 0.5)


# -- registry and options ------------------------------------------------------------------------


def test_registered_with_option_tables():
    assert NAMES == ["median", "trimmed-mean", "krum", "multi-krum", "norm-bound"]
    options = {name: [o for o, _, _ in strategy_options(name)] for name in NAMES}
    assert options == {
        "median": ["server_lr"],
        "trimmed-mean": ["server_lr", "trim"],
        "krum": ["server_lr", "byzantine"],
        "multi-krum": ["server_lr", "byzantine", "select"],
        "norm-bound": ["server_lr", "max_norm"],
    }
    s = make_strategy("multi-krum", {"byzantine": 4, "select": 10.0})
    assert s.settings == {"server_lr": 1.0, "byzantine": 4.0, "select": 10.0}
    assert isinstance(s.rule, MultiKrumRule) and (s.rule.byzantine, s.rule.select) == (4, 10)
    assert isinstance(s.rule.byzantine, int)
    assert make_strategy("median").state() == {}
    assert [make_strategy(name).min_updates for name in NAMES] == [1, 1, 5, 5, 1]  # byzantine = 1 by default
    assert make_strategy("multi-krum", {"byzantine": 2, "select": 10}).min_updates == 10


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("krum", {"byzantine": 1.5}, "strategy krum: option byzantine must be a whole number >= 0, got 1.5"),
        ("multi-krum", {"select": -1}, "strategy multi-krum: option select must be a whole number >= 0, got -1"),
        ("trimmed-mean", {"trim": 0.5}, "strategy trimmed-mean: option trim must be in [0, 0.5), got 0.5"),
        ("norm-bound", {"max_norm": 0}, "strategy norm-bound: option max_norm must be > 0, got 0"),
        ("median", {"trim": 0.1}, "strategy median: unknown option 'trim'; valid options: server_lr"),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict, message: str):
    with pytest.raises(ConfigError) as info:
        make_strategy(name, options)
    assert str(info.value) == message
