"""FedAvg, FedProx and FedAvgM against hand-written numpy loops."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import ConfigError, SchemaMismatch, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import FedAvg, FedAvgM, FedProx

SHAPES = {"fc.weight": (6, 5), "fc.bias": (5,), "gain": (), "big": (70_000,)}


def make_global(rng: np.random.Generator) -> Params:
    arrays: dict[str, np.ndarray] = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    arrays["bn.num_batches_tracked"] = np.array(120, np.int64)
    return Params.from_arrays(arrays)


def make_deltas(rng: np.random.Generator, k: int) -> list[Params]:
    out = []
    for _ in range(k):
        arrays: dict[str, np.ndarray] = {
            n: (0.1 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()
        }
        arrays["bn.num_batches_tracked"] = np.array(rng.integers(5, 40), np.int64)
        out.append(Params.from_arrays(arrays, ParamsKind.DELTA))
    return out


def mean_delta(deltas: list[Params], weights: list[float]) -> dict[str, np.ndarray]:
    """Oracle: np.average in float64 (integers rounded)."""
    out = {}
    for name, arr in deltas[0].items():
        m = np.average(np.stack([d[name].astype(np.float64) for d in deltas]), axis=0, weights=weights)
        out[name] = np.rint(m) if arr.dtype.kind != "f" else m
    return out


def run_round(strategy, global_params: Params, deltas: list[Params], weights: list[float]) -> Params:
    agg = strategy.new_aggregator(global_params)
    for d, w in zip(deltas, weights, strict=True):
        agg.add(d, w)
    return strategy.apply(global_params, agg.result())


def same(a: Params, b: Params) -> bool:
    return (a.kind, a.schema) == (b.kind, b.schema) and all(a[n].tobytes() == b[n].tobytes() for n in a)


def assert_close(got: Params, want: dict[str, np.ndarray], like: Params) -> None:
    assert got.kind is ParamsKind.FULL
    assert got.schema == like.schema
    for name, w in want.items():
        if got[name].dtype.kind != "f":
            np.testing.assert_array_equal(got[name], w.astype(got[name].dtype), err_msg=name)
        else:
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6, err_msg=name)


# -- FedAvg / FedProx ---------------------------------------------------------------


@pytest.mark.parametrize("server_lr", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_fedavg_is_global_plus_lr_times_weighted_mean(server_lr: float, k: int) -> None:
    rng = np.random.default_rng(k)
    g = make_global(rng)
    deltas = make_deltas(rng, k)
    weights = [float(n) for n in rng.integers(1, 1000, k)]
    new = run_round(FedAvg(server_lr=server_lr), g, deltas, weights)
    d = mean_delta(deltas, weights)
    want = {n: g[n].astype(np.float64) + (server_lr if g[n].dtype.kind == "f" else 1.0) * d[n] for n in g}
    assert_close(new, want, g)
    assert new["bn.num_batches_tracked"].dtype == np.int64


def test_fedavg_with_lr_one_equals_weighted_mean_of_local_models() -> None:
    rng = np.random.default_rng(0)
    g = make_global(rng)
    deltas = make_deltas(rng, 4)
    weights = [10.0, 20.0, 30.0, 40.0]
    locals_ = [{n: g[n].astype(np.float64) + d[n] for n in g} for d in deltas]
    want = {n: np.average(np.stack([loc[n] for loc in locals_]), axis=0, weights=weights) for n in g}
    want["bn.num_batches_tracked"] = np.rint(want["bn.num_batches_tracked"])
    assert_close(run_round(FedAvg(), g, deltas, weights), want, g)


def test_fedprox_applies_like_fedavg_and_sends_mu() -> None:
    rng = np.random.default_rng(1)
    g = make_global(rng)
    deltas = make_deltas(rng, 3)
    weights = [5.0, 1.0, 2.0]
    prox = FedProx(mu=0.25)
    assert prox.fit_config(1) == {"proximal_mu": 0.25}
    assert FedProx().fit_config(3) == {"proximal_mu": 0.01}
    assert FedProx(mu=0).fit_config(1) == {"proximal_mu": 0.0}
    assert same(run_round(prox, g, deltas, weights), run_round(FedAvg(), g, deltas, weights))
    assert FedAvg().fit_config(1) == {}


def test_apply_checks_the_aggregate() -> None:
    rng = np.random.default_rng(2)
    g = make_global(rng)
    (d,) = make_deltas(rng, 1)
    for strategy in (FedAvg(), FedAvgM()):
        with pytest.raises(StrategyError, match="must be a delta"):
            strategy.apply(g, d.with_kind(ParamsKind.FULL))
        wrong = Params.from_arrays({**dict(d), "fc.bias": np.zeros(4, np.float32)}, ParamsKind.DELTA)
        with pytest.raises(SchemaMismatch, match="fc.bias"):
            strategy.apply(g, wrong)


def test_aggregator_rejects_updates_not_fitting_the_global_model() -> None:
    rng = np.random.default_rng(3)
    g = make_global(rng)
    agg = FedAvg().new_aggregator(g)
    bad = Params.from_arrays({"fc.weight": np.zeros((6, 5), np.float32)}, ParamsKind.DELTA)
    with pytest.raises(SchemaMismatch):
        agg.add(bad, 1.0)
    assert agg.count == 0


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(), FedAvgM()])
def test_inputs_are_not_mutated(strategy) -> None:
    rng = np.random.default_rng(4)
    g = make_global(rng)
    deltas = make_deltas(rng, 3)
    before = [{n: p[n].copy() for n in p} for p in [g, *deltas]]
    for _ in range(2):
        run_round(strategy, g, deltas, [1.0, 2.0, 3.0])
    for p, b in zip([g, *deltas], before, strict=True):
        for n in b:
            np.testing.assert_array_equal(p[n], b[n])


def test_fedavg_is_stateless() -> None:
    s = FedAvg()
    assert s.state() == {}
    s.load_state({})
    with pytest.raises(ValueError, match=r"strategy fedavg keeps no state, got \['x'\]"):
        s.load_state({"x": np.zeros(1)})


@pytest.mark.parametrize(("cls", "kwargs"), [
    (FedAvg, {"server_lr": 0.0}), (FedAvg, {"server_lr": -1.0}), (FedProx, {"mu": -0.1}),
    (FedAvgM, {"momentum": 1.0}), (FedAvgM, {"momentum": -0.1}), (FedAvgM, {"server_lr": float("nan")}),
])
def test_constructors_validate(cls, kwargs) -> None:
    with pytest.raises(ConfigError, match=f"strategy {cls.name}: option {next(iter(kwargs))}"):
        cls(**kwargs)


# -- FedAvgM ------------------------------------------------------------------------


def fedavgm_oracle(g: Params, rounds, lr: float, beta: float) -> list[dict[str, np.ndarray]]:
    """Hsu et al. / Flower: g_t = -Δ; v = β v + g_t; x = x - lr v (v starts at 0)."""
    x = {n: a.astype(np.float64) for n, a in g.items()}
    v = {n: np.zeros(a.shape) for n, a in g.items() if a.dtype.kind == "f"}
    models = []
    for deltas, weights in rounds:
        d = mean_delta(deltas, weights)
        for n in x:
            if n in v:
                v[n] = beta * v[n] + (-d[n])
                x[n] = x[n] - lr * v[n]
            else:
                x[n] = x[n] + d[n]
        models.append({n: a.copy() for n, a in x.items()})
    return models


def make_rounds(rng: np.random.Generator, n: int) -> list[tuple[list[Params], list[float]]]:
    rounds = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        rounds.append((make_deltas(rng, k), [float(w) for w in rng.integers(1, 500, k)]))
    return rounds


@pytest.mark.parametrize(("lr", "beta"), [(1.0, 0.9), (0.7, 0.5), (1.0, 0.0)])
def test_fedavgm_three_rounds_match_numpy_loop(lr: float, beta: float) -> None:
    rng = np.random.default_rng(int(lr * 10 + beta * 100))
    g = make_global(rng)
    rounds = make_rounds(rng, 3)
    strategy = FedAvgM(server_lr=lr, momentum=beta)
    x = g
    for (deltas, weights), want in zip(rounds, fedavgm_oracle(g, rounds, lr, beta), strict=True):
        x = run_round(strategy, x, deltas, weights)
        assert_close(x, want, g)
    state = strategy.state()
    assert sorted(state) == sorted(f"momentum/{n}" for n in SHAPES)
    assert all(a.dtype == np.float32 for a in state.values())


def test_fedavgm_first_round_is_fedavg() -> None:
    rng = np.random.default_rng(8)
    g = make_global(rng)
    deltas = make_deltas(rng, 3)
    a = run_round(FedAvgM(server_lr=0.3), g, deltas, [1.0, 2.0, 3.0])
    b = run_round(FedAvg(server_lr=0.3), g, deltas, [1.0, 2.0, 3.0])
    for n in g:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-6, atol=1e-7)


def test_fedavgm_state_round_trip_reproduces_next_round_exactly() -> None:
    rng = np.random.default_rng(9)
    g = make_global(rng)
    rounds = make_rounds(rng, 3)
    first = FedAvgM(server_lr=0.9, momentum=0.8)
    x = g
    for deltas, weights in rounds[:2]:
        x = run_round(first, x, deltas, weights)
    saved = first.state()
    saved_copy = {k: v.copy() for k, v in saved.items()}
    resumed = FedAvgM(server_lr=0.9, momentum=0.8)
    resumed.load_state(saved)
    a = run_round(first, x, *rounds[2])
    b = run_round(resumed, x, *rounds[2])
    assert same(a, b)
    for k in saved:  # state() handed out copies: later rounds did not change them
        np.testing.assert_array_equal(saved[k], saved_copy[k])
    resumed.load_state({})  # resets to zero momentum
    assert resumed.state() == {}


def test_fedavgm_load_state_validates() -> None:
    rng = np.random.default_rng(10)
    g = make_global(rng)
    s = FedAvgM()
    with pytest.raises(StrategyError, match="unexpected state key 'velocity/fc.bias'"):
        s.load_state({"velocity/fc.bias": np.zeros(5, np.float32)})
    with pytest.raises(StrategyError, match="NaN"):
        s.load_state({"momentum/fc.bias": np.full(5, np.nan, np.float32)})
    s.load_state({"momentum/fc.bias": np.zeros(4, np.float32)})
    (d,) = make_deltas(rng, 1)
    with pytest.raises(SchemaMismatch):
        s.apply(g, d)
    full = {f"momentum/{n}": np.zeros(a.shape, np.float32) for n, a in g.items() if a.dtype.kind == "f"}
    full["momentum/fc.bias"] = np.zeros(5, np.float64)
    s.load_state(full)
    with pytest.raises(SchemaMismatch, match="float64"):
        s.apply(g, d)
