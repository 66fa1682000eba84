"""FedAdam, FedYogi and FedAdagrad against a hand-written numpy loop (Reddi et al. 2021)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from potluck.core.errors import ConfigError, SchemaMismatch, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import FedAdagrad, FedAdam, FedYogi

SHAPES = {"w": (8, 9), "b": (9,), "s": (), "long": (100_003,)}


def make_global(rng: np.random.Generator, dtype=np.float32) -> Params:
    arrays: dict[str, np.ndarray] = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    arrays["steps"] = np.array([7, 9], np.int64)
    return Params.from_arrays(arrays)


def make_deltas(rng: np.random.Generator, k: int, dtype=np.float32) -> list[Params]:
    out = []
    for _ in range(k):
        arrays: dict[str, np.ndarray] = {
            n: (0.05 * rng.standard_normal(s)).astype(dtype) for n, s in SHAPES.items()
        }
        arrays["steps"] = rng.integers(1, 20, 2).astype(np.int64)
        out.append(Params.from_arrays(arrays, ParamsKind.DELTA))
    return out


def make_rounds(rng, n, dtype=np.float32):
    rounds = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        rounds.append((make_deltas(rng, k, dtype), [float(w) for w in rng.integers(1, 300, k)]))
    return rounds


def run_round(strategy, global_params, deltas, weights) -> Params:
    agg = strategy.new_aggregator(global_params)
    for d, w in zip(deltas, weights, strict=True):
        agg.add(d, w)
    return strategy.apply(global_params, agg.result())


def oracle(rule: str, g: Params, rounds, eta, beta1, beta2, tau) -> list[dict[str, np.ndarray]]:
    """Reddi et al. 2021, Algorithm 2, in float64; m0 = 0, v0 = tau**2."""
    x = {n: a.astype(np.float64) for n, a in g.items()}
    m = {n: np.zeros(a.shape) for n, a in g.items() if a.dtype.kind == "f"}
    v = {n: np.full(a.shape, tau * tau) for n, a in g.items() if a.dtype.kind == "f"}
    models = []
    for deltas, weights in rounds:
        for n in x:
            stack = np.stack([d[n].astype(np.float64) for d in deltas])
            delta = np.average(stack, axis=0, weights=weights)
            if n not in m:
                x[n] = x[n] + np.rint(delta)
                continue
            m[n] = beta1 * m[n] + (1 - beta1) * delta
            if rule == "adagrad":
                v[n] = v[n] + delta**2
            elif rule == "adam":
                v[n] = beta2 * v[n] + (1 - beta2) * delta**2
            else:
                v[n] = v[n] - (1 - beta2) * delta**2 * np.sign(v[n] - delta**2)
            x[n] = x[n] + eta * m[n] / (np.sqrt(v[n]) + tau)
        models.append({n: a.copy() for n, a in x.items()})
    return models


CASES = [
    ("adam", FedAdam, dict(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)),
    ("adam", FedAdam, dict(server_lr=0.3, beta1=0.5, beta2=0.9, tau=0.05)),
    ("yogi", FedYogi, dict(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)),
    ("yogi", FedYogi, dict(server_lr=0.1, beta1=0.0, beta2=0.5, tau=0.01)),
    ("adagrad", FedAdagrad, dict(server_lr=0.01, beta1=0.9, tau=1e-3)),
    ("adagrad", FedAdagrad, dict(server_lr=0.1, beta1=0.0, tau=1e-2)),  # pure Adagrad
]


@pytest.mark.parametrize(("rule", "cls", "opts"), CASES)
def test_three_rounds_match_numpy_loop(rule, cls, opts) -> None:
    rng = np.random.default_rng(sum(map(ord, rule)) + int(opts["server_lr"] * 100))
    g = make_global(rng)
    rounds = make_rounds(rng, 3)
    strategy = cls(**opts)
    want = oracle(rule, g, rounds, opts["server_lr"], opts["beta1"], opts.get("beta2", 0.0), opts["tau"])
    x = g
    for (deltas, weights), expected in zip(rounds, want, strict=True):
        x = run_round(strategy, x, deltas, weights)
        assert x.kind is ParamsKind.FULL and x.schema == g.schema
        for n in expected:
            if x[n].dtype.kind == "f":
                np.testing.assert_allclose(x[n], expected[n], rtol=1e-5, atol=1e-6, err_msg=n)
            else:
                np.testing.assert_array_equal(x[n], expected[n].astype(np.int64), err_msg=n)
    state = strategy.state()
    assert sorted(state) == sorted([f"m/{n}" for n in SHAPES] + [f"v/{n}" for n in SHAPES])
    assert all(a.dtype == np.float32 and not a.flags.writeable for a in state.values())


def test_float64_models_keep_float64_state() -> None:
    rng = np.random.default_rng(5)
    g = make_global(rng, np.float64)
    rounds = make_rounds(rng, 2, np.float64)
    strategy = FedYogi(server_lr=0.05)
    want = oracle("yogi", g, rounds, 0.05, 0.9, 0.99, 1e-3)
    x = g
    for deltas, weights in rounds:
        x = run_round(strategy, x, deltas, weights)
    for n in SHAPES:
        assert x[n].dtype == np.float64
        np.testing.assert_allclose(x[n], want[-1][n], rtol=1e-12, atol=1e-13)
    assert all(a.dtype == np.float64 for a in strategy.state().values())


def test_first_step_by_hand() -> None:
    # one scalar, Δ = 0.2: m = 0.1·0.2 = 0.02, v = 0.99·τ² + 0.01·0.04, x = 1 + η·m/(√v + τ)
    g = Params.from_arrays({"x": np.array(1.0, np.float32)})
    d = Params.from_arrays({"x": np.array(0.2, np.float32)}, ParamsKind.DELTA)
    tau, eta = 1e-3, 0.01
    new = run_round(FedAdam(server_lr=eta, tau=tau), g, [d], [1.0])
    v = 0.99 * tau**2 + 0.01 * 0.04
    np.testing.assert_allclose(new["x"], 1 + eta * 0.02 / (np.sqrt(v) + tau), rtol=1e-6)


@pytest.mark.parametrize(("rule", "cls", "opts"), CASES[::2])
def test_state_round_trip_reproduces_next_round_exactly(rule, cls, opts) -> None:
    rng = np.random.default_rng(17)
    g = make_global(rng)
    rounds = make_rounds(rng, 3)
    first = cls(**opts)
    x = g
    for deltas, weights in rounds[:2]:
        x = run_round(first, x, deltas, weights)
    resumed = cls(**opts)
    resumed.load_state(first.state())
    a = run_round(first, x, *rounds[2])
    b = run_round(resumed, x, *rounds[2])
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)
    assert all(np.array_equal(first.state()[k], resumed.state()[k]) for k in first.state())


def test_inputs_are_not_mutated() -> None:
    rng = np.random.default_rng(3)
    g = make_global(rng)
    deltas = make_deltas(rng, 3)
    before = [{n: p[n].copy() for n in p} for p in [g, *deltas]]
    strategy = FedAdam()
    for _ in range(2):
        run_round(strategy, g, deltas, [1.0, 2.0, 3.0])
    for p, b in zip([g, *deltas], before, strict=True):
        for n in b:
            np.testing.assert_array_equal(p[n], b[n])


def test_load_state_validates() -> None:
    s = FedAdam()
    z = np.zeros(9, np.float32)
    with pytest.raises(StrategyError, match="unexpected state key 'mu/b'"):
        s.load_state({"mu/b": z})
    with pytest.raises(StrategyError, match="only m for \\['b'\\]"):
        s.load_state({"m/b": z})
    with pytest.raises(StrategyError, match="negative"):
        s.load_state({"m/b": z, "v/b": z - 1})
    with pytest.raises(StrategyError, match="NaN"):
        s.load_state({"m/b": z + np.nan, "v/b": z})
    with pytest.raises(StrategyError, match="floating point"):
        s.load_state({"m/b": z.astype(np.int32), "v/b": z})
    assert s.state() == {}  # failed loads changed nothing
    s.load_state({"m/b": z, "v/b": z})  # valid keys but not the whole model
    rng = np.random.default_rng(0)
    g = make_global(rng)
    with pytest.raises(SchemaMismatch):
        s.apply(g, make_deltas(rng, 1)[0])


def test_apply_checks_the_aggregate() -> None:
    rng = np.random.default_rng(1)
    g = make_global(rng)
    (d,) = make_deltas(rng, 1)
    with pytest.raises(StrategyError, match="must be a delta"):
        FedYogi().apply(g, d.with_kind(ParamsKind.FULL))
    with pytest.raises(SchemaMismatch):
        FedYogi().apply(g, Params.from_arrays({"w": np.zeros((8, 9), np.float32)}, ParamsKind.DELTA))


@pytest.mark.parametrize(("cls", "kwargs", "text"), [
    (FedAdam, {"beta1": 1.0}, "must be in [0, 1)"),
    (FedAdam, {"beta2": -0.1}, "must be in [0, 1)"),
    (FedYogi, {"tau": 0.0}, "must be > 0"),
    (FedYogi, {"server_lr": -0.01}, "must be > 0"),
    (FedAdagrad, {"beta1": 1.5}, "must be in [0, 1)"),
    (FedAdagrad, {"tau": float("inf")}, "must be finite"),
])
def test_constructors_validate(cls, kwargs, text) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"strategy {cls.name}: option {next(iter(kwargs))} {text}")):
        cls(**kwargs)


def test_fedadagrad_has_no_beta2() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta2'"):
        FedAdagrad(beta2=0.9)  # type: ignore[call-arg]
