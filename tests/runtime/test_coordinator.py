"""The round loop against scripted in-memory nodes, checked with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import NodeLeft, RoundFailed
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.strategies import make_strategy
from potluck.testing import FakeClock, ScriptedPool

RNG = np.random.default_rng(7)
DELTAS = {f"n{i}": RNG.normal(size=(3, 4)).astype(np.float32) for i in range(6)}
EXAMPLES = {f"n{i}": 10 * (i + 1) for i in range(6)}
START = Params.from_arrays({"w": np.zeros((3, 4), np.float32)})


def honest(node: str):
    def script(ins: FitInstruction) -> FitResult:
        update = Params.from_arrays({"w": DELTAS[node]}, ParamsKind.DELTA)
        return FitResult(ins.round, node, update, EXAMPLES[node], {"train_loss": 1.0})

    return script


def nan_update(ins: FitInstruction) -> FitResult:
    bad = np.full((3, 4), np.nan, np.float32)
    return FitResult(ins.round, ins.node_id, Params.from_arrays({"w": bad}, ParamsKind.DELTA), 10)


def broken(ins: FitInstruction) -> FitResult:
    raise RuntimeError("disk on fire")


def coordinator(pool, **policy) -> Coordinator:
    return Coordinator(pool, make_strategy("fedavg"), RoundPolicy(**{"rounds": 1, **policy}))


def test_round_is_example_weighted_mean_of_updates():
    pool = ScriptedPool({n: honest(n) for n in DELTAS})
    params, record = coordinator(pool).run_round(1, START)
    expected = np.average(np.stack(list(DELTAS.values())), axis=0, weights=list(EXAMPLES.values()))
    np.testing.assert_allclose(params["w"], expected, rtol=1e-5, atol=1e-6)
    assert record.num_nodes == 6 and record.sampled == 6
    assert record.num_examples == sum(EXAMPLES.values())
    assert record.model_digest == params.digest


def test_arrival_order_does_not_change_the_model():
    forward = ScriptedPool({n: honest(n) for n in DELTAS})
    backward = ScriptedPool({n: honest(n) for n in DELTAS}, order=lambda nodes: nodes[::-1])
    a, _ = coordinator(forward).run_round(1, START)
    b, _ = coordinator(backward).run_round(1, START)
    assert a.digest == b.digest


def test_nan_update_is_rejected_not_averaged():
    scripts = {n: honest(n) for n in DELTAS} | {"bad": nan_update}
    params, record = coordinator(ScriptedPool(scripts)).run_round(1, START)
    assert np.isfinite(params["w"]).all()
    assert record.failures == {"rejected": 1}
    expected = np.average(np.stack(list(DELTAS.values())), axis=0, weights=list(EXAMPLES.values()))
    np.testing.assert_allclose(params["w"], expected, rtol=1e-5, atol=1e-6)


def test_failures_are_counted_by_kind_and_round_commits_with_quorum():
    def leaves(ins: FitInstruction) -> FitResult:
        raise NodeLeft(ins.node_id, "shutting down")

    scripts = {"n0": honest("n0"), "n1": honest("n1"), "x": broken, "y": leaves}
    _, record = coordinator(ScriptedPool(scripts), quorum=0.5).run_round(1, START)
    assert record.num_nodes == 2
    assert record.failures == {"failed": 1, "left": 1}


def test_quorum_not_met_retries_then_fails_with_reason():
    scripts = {"n0": honest("n0"), "x": broken, "y": broken, "z": broken}
    pool = ScriptedPool(scripts)
    with pytest.raises(RoundFailed, match=r"round 1 failed after 3 attempts.*quorum needs 3"):
        coordinator(pool, quorum=0.75, max_retries=2).run_round(1, START)
    assert len(pool.calls) == 12  # 3 attempts × 4 nodes


def test_result_for_another_round_or_duplicate_is_rejected():
    def stale(ins: FitInstruction) -> FitResult:
        return honest("n1")(FitInstruction(ins.round - 1, "n1", ins.params))

    scripts = {"n0": honest("n0"), "n1": stale}
    _, record = coordinator(ScriptedPool(scripts), quorum=0.5).run_round(5, START)
    assert record.failures == {"rejected": 1} and record.num_nodes == 1


def test_sampling_is_seeded_and_respects_fraction_and_min_nodes():
    pool = ScriptedPool({f"n{i}": honest("n0") for i in range(100)})
    coord = coordinator(pool, fraction=0.1, min_nodes=15, seed=3)
    first = coord.sample(4)
    assert len(first) == 15 and first == sorted(first, key=lambda n: int(n[1:]))
    assert coord.sample(4) == first
    assert coord.sample(5) != first
    assert coordinator(pool, fraction=0.1, min_nodes=15, seed=4).sample(4) != first
    assert len(coordinator(pool, fraction=0.3).sample(1)) == 30


def test_too_few_nodes_fails_the_round():
    pool = ScriptedPool({"n0": honest("n0")})
    with pytest.raises(RoundFailed, match="min_nodes is 2"):
        coordinator(pool, min_nodes=2, max_retries=0).run_round(1, START)


def test_run_calls_hooks_once_per_committed_round_and_evaluates():
    seen = []

    class Hook:
        def on_commit(self, record, params, strategy):
            seen.append((record.round, record.accuracy, params.digest))

    from potluck.tasks.protocol import EvalOutput

    pool = ScriptedPool({n: honest(n) for n in DELTAS})
    coord = Coordinator(
        pool, make_strategy("fedavg"), RoundPolicy(rounds=3),
        evaluator=lambda p: EvalOutput(float(np.abs(p["w"]).sum()), 1, {"accuracy": 0.5}),
        hooks=[Hook()],
    )
    final = coord.run(START, first_round=2)
    assert [r for r, _, _ in seen] == [2, 3]
    assert seen[-1][2] == final.digest and seen[-1][1] == 0.5


def test_round_seconds_use_the_injected_clock():
    clock = FakeClock()

    def slow(ins: FitInstruction) -> FitResult:
        clock.advance(2.5)
        return honest("n0")(ins)

    coord = Coordinator(ScriptedPool({"n0": slow}), make_strategy("fedavg"), RoundPolicy(rounds=1), clock=clock)
    _, record = coord.run_round(1, START)
    assert math.isclose(record.seconds, 2.5)


def test_policy_validation():
    from potluck.core.errors import ConfigError

    for bad in ({"rounds": 0}, {"fraction": 0}, {"quorum": 1.5}, {"round_timeout": 0}, {"min_nodes": 0}):
        with pytest.raises(ConfigError):
            RoundPolicy(**bad)
