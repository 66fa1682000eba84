"""The round loop against scripted in-memory nodes, checked with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import NodeLeft, RoundFailed
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.coordinator import Coordinator, RoundPolicy, sample_size
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


@pytest.mark.parametrize(("fraction", "available", "expected"), [
    (0.07, 100, 7), (0.1, 100, 10), (0.29, 100, 29), (0.57, 100, 57), (0.3, 10, 3), (0.15, 20, 3),
    (0.001, 100, 1), (1.0, 10, 10), (0.05, 1000, 50),
])
def test_sample_size_is_exact_for_the_written_fraction(fraction, available, expected):
    assert sample_size(fraction, available) == expected


def test_sample_size_honours_min_nodes_and_the_pool():
    assert sample_size(0.07, 100, min_nodes=9) == 9
    assert sample_size(0.5, 3, min_nodes=5) == 3


def test_a_round_samples_seven_of_a_hundred_at_fraction_point_zero_seven():
    pool = ScriptedPool({f"n{i}": honest("n0") for i in range(100)})
    assert len(coordinator(pool, fraction=0.07).sample(1)) == 7


def test_too_few_nodes_fails_the_round():
    pool = ScriptedPool({"n0": honest("n0")})
    with pytest.raises(RoundFailed, match="min_nodes is 2"):
        coordinator(pool, min_nodes=2, max_retries=0).run_round(1, START)


def test_run_calls_hooks_once_per_committed_round_and_evaluates():
    seen = []

    class Hook:
        def on_commit(self, record, params, strategy):
            seen.append((record.round, record.primary, params.digest))

    from potluck.tasks.protocol import EvalOutput, MetricSpec

    pool = ScriptedPool({n: honest(n) for n in DELTAS})
    coord = Coordinator(
        pool, make_strategy("fedavg"), RoundPolicy(rounds=3),
        evaluator=lambda p: EvalOutput(float(np.abs(p["w"]).sum()), 1, {"perplexity": 7.5}),
        hooks=[Hook()], metric=MetricSpec("perplexity", higher_is_better=False),
    )
    final = coord.run(START, first_round=2)
    assert [r for r, _, _ in seen] == [2, 3]
    assert seen[-1][2] == final.digest and seen[-1][1] == 7.5


def test_records_carry_every_metric_and_the_nodes_weighted_means():
    from potluck.core.messages import EvaluateResult
    from potluck.tasks.protocol import EvalOutput, MetricSpec

    class Validating(ScriptedPool):
        def evaluate(self, instructions, timeout):
            for ins, (loss, n, mse) in zip(instructions, [(1.0, 1, 2.0), (4.0, 3, 6.0), (9.0, 0, 9.0)]):
                yield EvaluateResult(ins.round, ins.node_id, loss, n, {"mse": mse, "r2": 0.5})

    coord = Coordinator(Validating({n: honest(n) for n in list(DELTAS)[:3]}), make_strategy("fedavg"),
                        RoundPolicy(rounds=2, federated_eval_every=0),
                        evaluator=lambda p: EvalOutput(0.25, 10, {"mse": 0.25, "rmse": 0.5}),
                        metric=MetricSpec("mse", higher_is_better=False))
    _, first = coord.run_round(1, START)
    _, last = coord.run_round(2, START)
    assert first.federated_metrics == {}  # federated evaluation only in the last round
    assert last.metrics == {"loss": 0.25, "mse": 0.25, "rmse": 0.5}
    assert (last.metric, last.higher_is_better, last.primary, last.loss) == ("mse", False, 0.25, 0.25)
    # weighted by examples: (1 × 1 + 3 × 4) / 4; the node without examples does not count
    assert last.federated_metrics == {"loss": 13 / 4, "mse": 20 / 4, "r2": 0.5}
    assert last.federated_primary == 5.0 and last.federated_loss == 13 / 4


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


def test_a_failed_round_names_the_first_failure_of_each_kind_with_its_cause():
    def leaves(ins: FitInstruction) -> FitResult:
        raise NodeLeft(ins.node_id, "shutting down")

    scripts = {"n0": honest("n0"), "x": broken, "y": broken, "z": leaves}
    with pytest.raises(RoundFailed) as caught:
        coordinator(ScriptedPool(scripts), quorum=0.75, max_retries=1).run_round(1, START)
    message = str(caught.value)
    assert message.startswith("round 1 failed after 2 attempts: attempt 1: 1 of 4 results usable, quorum needs 3 "
                              "(2 failed, first x: RuntimeError: disk on fire; 1 left, first z: shutting down)")
    assert "attempt 2: " in message and "{" not in message  # causes, not a dict of counts


def test_a_failing_task_on_a_real_node_reaches_the_error_with_its_exception():
    from potluck.backends.inprocess import InProcessPool
    from potluck.runtime.federation import FederationSpec, build_federation
    from potluck.runtime.node import NodeData
    from potluck.tasks.data.dataset import Dataset

    fed = build_federation(FederationSpec(nodes=3))
    wrong = Dataset(np.zeros((8, 5), np.float32), np.arange(8) % 2, source="wrong width")  # 5 features, not 64
    nodes = {**fed.nodes, "node-001": NodeData(wrong, wrong)}
    pool = InProcessPool(fed.task, nodes)
    with pytest.raises(RoundFailed, match=r"1 failed, first node-001: fit raised RuntimeError: mat1 and mat2 shapes"):
        coordinator(pool, quorum=1.0, max_retries=0).run_round(1, fed.initial_params)


def test_the_record_keeps_every_failure_with_its_cause():
    from potluck.core.records import Failure

    def leaves(ins: FitInstruction) -> FitResult:
        raise NodeLeft(ins.node_id, "shutting down")

    scripts = {"n0": honest("n0"), "n1": honest("n1"), "x": broken, "y": leaves}
    _, record = coordinator(ScriptedPool(scripts), quorum=0.5).run_round(1, START)
    assert record.failure_causes == (Failure("x", "failed", "RuntimeError: disk on fire"),
                                     Failure("y", "left", "shutting down"))
    assert record.provenance is not None and record.provenance.absent == (("x", "failed"), ("y", "left"))


def test_absences_of_every_attempt_reach_the_ledger_and_discarded_updates_are_named():
    from potluck.core.records import Failure

    calls = {"n": 0}

    def flaky(ins: FitInstruction) -> FitResult:  # fails in the first attempt only
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("warming up")
        return honest("n1")(ins)

    _, record = coordinator(ScriptedPool({"n0": honest("n0"), "n1": flaky}), quorum=1.0).run_round(1, START)
    assert record.attempts == 2 and record.num_nodes == 2 and record.failures == {}  # counts: the committed attempt
    assert record.failure_causes == (Failure("n1", "failed", "RuntimeError: warming up", attempt=1),)  # causes: all
    assert record.provenance is not None
    assert record.provenance.absent == (("n1", "failed"), ("n0", "discarded"))
    assert [c.node_id for c in record.provenance.contributions] == ["n0", "n1"]


def test_aggregation_time_on_the_record_includes_the_server_step():
    clock = FakeClock()
    strategy = make_strategy("fedavg")
    plain_apply = strategy.apply

    def slow_apply(params, aggregate):
        clock.advance(1.5)
        return plain_apply(params, aggregate)

    strategy.apply = slow_apply  # type: ignore[method-assign]
    coord = Coordinator(ScriptedPool({"n0": honest("n0")}), strategy, RoundPolicy(rounds=1), clock=clock)
    _, record = coord.run_round(1, START)
    assert record.aggregate_seconds == 1.5


def test_a_pool_that_waits_for_nodes_is_asked_to_when_too_few_are_there():
    class Joining(ScriptedPool):
        """Nodes n1, n2 join while the coordinator waits."""

        waited: list[tuple[int, float]] = []

        def node_ids(self):
            return list(self.scripts) if self.waited else ["n0"]

        def wait_for_nodes(self, count, timeout):
            self.waited.append((count, timeout))
            return True

    pool = Joining({n: honest(n) for n in ("n0", "n1", "n2")})
    assert coordinator(pool, min_nodes=3, round_timeout=9.0).sample(1) == ["n0", "n1", "n2"]
    assert pool.waited == [(3, 9.0)]


def test_pool_defaults_answer_at_once_and_refuse_protocol_messages():
    from potluck.core.errors import ConfigError

    pool = ScriptedPool({"n0": honest("n0")})
    assert pool.wait_for_nodes(1, 600.0) and not pool.wait_for_nodes(2, 600.0)
    with pytest.raises(ConfigError, match="ScriptedPool cannot relay protocol messages"):
        pool.exchange("secagg/advertise", {"n0": b""}, 1.0)
    with pytest.raises(RoundFailed, match="only 1 nodes available, min_nodes is 2"):
        coordinator(pool, min_nodes=2, max_retries=0).run_round(1, START)
