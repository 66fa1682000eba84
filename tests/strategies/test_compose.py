"""Every aggregation rule with every server step, against numpy oracles of both halves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import ConfigError, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import (
    SERVER_OPTS,
    AdamStep,
    FedAdam,
    FedProx,
    MedianRule,
    Strategy,
    make_strategy,
    strategy_options,
)
from potluck.strategies.central_dp import CentralDP

SHAPES = {"w": (4, 3), "b": (3,)}
RULES = ["fedavg", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound"]  # presets with the rules under test
STEPS = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def make_global(rng: np.random.Generator) -> Params:
    return Params.from_arrays({n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()})


def make_round(rng: np.random.Generator, n: int = 7) -> tuple[list[Params], list[float]]:
    ups = [Params.from_arrays({k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()},
                              ParamsKind.DELTA) for _ in range(n)]
    return ups, [float(w) for w in rng.integers(1, 50, n)]


def run_round(strategy: Strategy, x: Params, updates: list[Params], weights: list[float]) -> Params:
    agg = strategy.new_aggregator(x)
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return strategy.apply(x, agg.result())


# -- numpy oracles: rules -------------------------------------------------------------------


def stack(updates: list[Params], name: str) -> np.ndarray:
    return np.stack([u[name].astype(np.float64) for u in updates])


def flat(u: Params) -> np.ndarray:
    return np.concatenate([u[n].astype(np.float64).ravel() for n in SHAPES])


def krum_order(updates: list[Params], f: int) -> np.ndarray:
    vecs = np.stack([flat(u) for u in updates])
    d = ((vecs[:, None, :] - vecs[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(d[i], i))[: len(updates) - f - 2].sum() for i in range(len(updates))]
    return np.argsort(scores, kind="stable")


def rule_oracle(rule: str, updates: list[Params], weights: list[float]) -> dict[str, np.ndarray]:
    n, w = len(updates), np.array(weights)
    if rule == "median":
        return {k: np.median(stack(updates, k), axis=0) for k in SHAPES}
    if rule == "trimmed-mean":  # trim = 0.2 of 7 updates: ⌊1.4⌋ = 1 dropped at each end
        return {k: np.sort(stack(updates, k), axis=0)[1 : n - 1].mean(axis=0) for k in SHAPES}
    if rule == "krum":
        best = int(krum_order(updates, 1)[0])
        return {k: updates[best][k].astype(np.float64) for k in SHAPES}
    if rule == "multi-krum":
        keep = sorted(krum_order(updates, 1)[: n - 1])
        return {k: np.average(stack(updates, k)[keep], axis=0, weights=w[keep]) for k in SHAPES}
    scale = np.ones(n)
    if rule == "norm-bound":
        scale = np.array([min(1.0, 0.5 / np.linalg.norm(flat(u))) for u in updates])
    return {k: np.average(stack(updates, k) * scale.reshape(n, *([1] * len(SHAPES[k]))), axis=0, weights=w)
            for k in SHAPES}


RULE_OPTIONS: dict[str, dict[str, float]] = {"trimmed-mean": {"trim": 0.2}, "norm-bound": {"max_norm": 0.5}}


# -- numpy oracles: server steps (float64, state across rounds) ---------------------------------


class StepOracle:
    LR = {"fedavg": 0.7, "fedavgm": 0.7, "fedadam": 0.05, "fedyogi": 0.05, "fedadagrad": 0.05}

    def __init__(self, step: str) -> None:
        self.step, self.lr, self.beta, self.b1, self.b2, self.tau = step, self.LR[step], 0.8, 0.9, 0.99, 1e-3
        self.v: dict[str, np.ndarray] = {}
        self.m: dict[str, np.ndarray] = {}

    def apply(self, x: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: self._one(k, x[k], delta[k]) for k in x}

    def _one(self, k: str, x: np.ndarray, d: np.ndarray) -> np.ndarray:
        if self.step == "fedavg":
            return x + self.lr * d
        if self.step == "fedavgm":
            self.v[k] = self.beta * self.v.get(k, 0.0) - d
            return x - self.lr * self.v[k]
        m = self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * d
        v = self.v.get(k, np.full(d.shape, self.tau**2))
        if self.step == "fedadam":
            v = self.b2 * v + (1 - self.b2) * d * d
        elif self.step == "fedyogi":
            v = v - (1 - self.b2) * d * d * np.sign(v - d * d)
        else:
            v = v + d * d
        self.v[k] = v
        return x + self.lr * m / (np.sqrt(v) + self.tau)


def step_options(step: str) -> dict[str, float]:
    opts: dict[str, float] = {"server_lr": StepOracle.LR[step]}
    if step == "fedavgm":
        opts["momentum"] = 0.8
    return opts


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("rule", RULES)
def test_every_rule_with_every_step_matches_the_two_oracles_over_two_rounds(rule: str, step: str) -> None:
    rng = np.random.default_rng(10 * RULES.index(rule) + STEPS.index(step))
    x = make_global(rng)
    strategy = make_strategy(rule, {**RULE_OPTIONS.get(rule, {}), **step_options(step)}, server_opt=step)
    assert strategy.step.name == step and strategy.rule.name == ("mean" if rule == "fedavg" else rule)
    oracle, want = StepOracle(step), {k: a.astype(np.float64) for k, a in x.items()}
    for _ in range(2):
        updates, weights = make_round(rng)
        x = run_round(strategy, x, updates, weights)
        want = oracle.apply(want, rule_oracle(rule, updates, weights))
        for k in SHAPES:
            np.testing.assert_allclose(x[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"{rule} + {step}: {k}")


def test_median_with_fedadam_is_the_median_then_an_adam_step_by_hand() -> None:
    x = Params.from_arrays({"w": np.array([1.0, -2.0], np.float32)})
    ups = [Params.from_arrays({"w": np.array(v, np.float32)}, ParamsKind.DELTA)
           for v in ([0.1, 0.4], [0.3, -0.2], [9.0, 0.0])]
    got = run_round(make_strategy("median", {"server_lr": 0.1, "beta1": 0.5}, server_opt="fedadam"), x, ups,
                    [1.0, 1.0, 100.0])
    d = np.array([0.3, 0.0])  # the median of each coordinate; the 100 examples do not count
    m = 0.5 * d
    v = 0.99 * 1e-6 + 0.01 * d * d
    np.testing.assert_allclose(got["w"], np.array([1.0, -2.0]) + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)


def test_registry_composition_equals_composing_by_hand_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    x = make_global(rng)
    a = make_strategy("median", {"beta1": 0.5}, server_opt="fedadam")
    b = Strategy(MedianRule(), AdamStep(beta1=0.5))
    for _ in range(3):
        updates, weights = make_round(rng, 4)
        xa, xb = run_round(a, x, updates, weights), run_round(b, x, updates, weights)
        assert xa.digest == xb.digest
        x = xa
    assert a.state().keys() == b.state().keys() and a.name == "median+fedadam" and b.name == "median+fedadam"


def test_the_preset_steps_are_unchanged_by_server_opt_auto_or_their_own_name() -> None:
    for opt in (None, "auto", "fedadam"):
        s = make_strategy("fedadam", {"beta2": 0.5}, server_opt=opt)
        assert isinstance(s, FedAdam) and s.name == "fedadam" and s.settings["beta2"] == 0.5
    assert SERVER_OPTS == ("auto", "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def test_options_split_between_rule_and_new_step() -> None:
    s = make_strategy("trimmed-mean", {"trim": 0.3, "beta1": 0.2}, server_opt="fedyogi")
    assert s.settings == {"server_lr": 0.01, "beta1": 0.2, "beta2": 0.99, "tau": 1e-3, "trim": 0.3}
    assert [o for o, _, _ in strategy_options("krum", server_opt="fedavgm")] == ["server_lr", "momentum", "byzantine"]
    with pytest.raises(ConfigError) as info:
        make_strategy("median", {"momentum": 0.5}, server_opt="fedadam")
    assert str(info.value) == ("strategy median with server step fedadam: unknown option 'momentum'; "
                               "valid options: beta1, beta2, server_lr, tau")
    with pytest.raises(ConfigError, match="with server step fedavgm: option momentum must be in"):
        make_strategy("krum", {"momentum": 1.0}, server_opt="fedavgm")


def test_unknown_server_step_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("median", server_opt="sgd")
    assert str(info.value) == ("unknown server step 'sgd' (server_opt); valid: auto, fedavg, fedavgm, fedadam, "
                               "fedyogi, fedadagrad")


def test_swapping_the_step_keeps_what_nodes_are_told_and_the_rule_hooks() -> None:
    prox = make_strategy("fedprox", {"mu": 0.5, "tau": 0.01}, server_opt="fedadam")
    assert isinstance(prox, FedProx) and prox.fit_config(1) == {"proximal_mu": 0.5}
    assert isinstance(prox.step, AdamStep) and prox.step.tau == 0.01
    krum = make_strategy("krum", {"byzantine": 2}, server_opt="fedadam")
    assert krum.min_updates == 7 and krum.needs_each_update
    assert not make_strategy("fedavg", server_opt="fedyogi").needs_each_update


def test_state_is_the_steps_under_its_old_names_and_resumes_exactly() -> None:
    rng = np.random.default_rng(11)
    x = make_global(rng)
    whole = make_strategy("median", {"momentum": 0.5}, server_opt="fedavgm")
    x = run_round(whole, x, *make_round(rng))
    saved = whole.state()
    assert sorted(saved) == ["momentum/b", "momentum/w"]
    resumed = make_strategy("median", {"momentum": 0.5}, server_opt="fedavgm")
    resumed.load_state(saved)
    nxt = make_round(rng)
    assert run_round(resumed, x, *nxt).digest == run_round(whole, x, *nxt).digest


def test_dp_refuses_a_rule_that_must_see_each_update_whatever_its_step() -> None:
    with pytest.raises(ConfigError, match="cannot be combined with strategy median\\+fedadam"):
        CentralDP(make_strategy("median", server_opt="fedadam"), expected_nodes=4, clip=1.0)
    dp = CentralDP(make_strategy("fedavg", server_opt="fedadam"), expected_nodes=4, clip=1.0)
    assert isinstance(dp.step, AdamStep) and dp.needs_each_update
    assert not CentralDP(make_strategy("fedavg"), expected_nodes=4, clip=None).needs_each_update


def test_a_failed_load_changes_neither_part() -> None:
    dp = CentralDP(make_strategy("fedavgm"), expected_nodes=4, clip=1.0)
    good = {"momentum/w": np.ones((4, 3), np.float32), "dp/rounds": np.array([2.0]), "dp/clip": np.array([0.5])}
    dp.load_state(good)
    with pytest.raises(StrategyError, match="dp/rounds"):
        dp.load_state({"momentum/w": np.zeros((4, 3), np.float32)})
    assert sorted(dp.state()) == ["dp/clip", "dp/rounds", "momentum/w"] and dp.rounds == 2
    np.testing.assert_array_equal(dp.state()["momentum/w"], 1.0)


def test_composing_checks_its_parts() -> None:
    with pytest.raises(StrategyError, match="rule must be an AggregationRule, got AdamStep"):
        Strategy(AdamStep(), AdamStep())  # type: ignore[arg-type]
    with pytest.raises(StrategyError, match="step must be a ServerStep, got MedianRule"):
        make_strategy("fedavg").with_step(MedianRule())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="server step fedadam: option beta1 must be in"):
        AdamStep(beta1=1.0)
    assert math.isclose(AdamStep().settings["server_lr"], 0.01)
