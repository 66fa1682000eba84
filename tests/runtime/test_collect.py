"""The one collect loop: the plain fold, the reorder buffer, the frozen attempt outcome."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from potluck.core.errors import NodeLeft, NodeResultInvalid, NodeTimedOut, ParamsError
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.core.records import Failure
from potluck.runtime.collect import (
    MAX_CAUSE,
    AggregatorFold,
    AttemptOutcome,
    Collector,
    ReorderBuffer,
    describe,
    failure,
    failure_kind,
)
from potluck.strategies import make_strategy
from potluck.testing import FakeClock, ScriptedPool
from potluck.updates.pipeline import UpdatePipeline

RNG = np.random.default_rng(11)
NODES = [f"n{i}" for i in range(5)]
DELTAS = {v: RNG.normal(size=(2, 3)).astype(np.float32) for v in NODES}
EXAMPLES = {v: 7 * (i + 1) for i, v in enumerate(NODES)}
LOSSES = {v: 0.1 * (i + 1) for i, v in enumerate(NODES)}
START = Params.from_arrays({"w": np.zeros((2, 3), np.float32)})


def result(node: str, rnd: int = 1, examples: int | None = None) -> FitResult:
    update = Params.from_arrays({"w": DELTAS[node]}, ParamsKind.DELTA)
    return FitResult(rnd, node, update, EXAMPLES[node] if examples is None else examples, {"train_loss": LOSSES[node]})


def honest(ins: FitInstruction) -> FitResult:
    return result(ins.node_id, ins.round)


def plain_fold() -> AggregatorFold:
    return AggregatorFold(make_strategy("fedavg").new_aggregator(START), UpdatePipeline(()), START.schema)


def collector(pool, quorum: float = 0.5) -> Collector:
    return Collector(pool, timeout=60.0, quorum=quorum, seed=3, clock=FakeClock())


# -- the plain fold ---------------------------------------------------------------------------

def test_aggregator_fold_is_the_example_weighted_mean_and_instructs_everyone():
    fold = plain_fold()
    assert fold.setup(NODES) == (NODES, []) and fold.fit_config() == {}
    for v in NODES:
        fold.add(result(v))
    expected = np.average(np.stack([DELTAS[v] for v in NODES]), axis=0, weights=[EXAMPLES[v] for v in NODES])
    np.testing.assert_allclose(fold.finish()["w"], expected, rtol=1e-6, atol=1e-7)


def test_aggregator_fold_refuses_a_nan_update_and_stays_unchanged():
    fold = plain_fold()
    fold.add(result("n0"))
    bad = FitResult(1, "n1", Params.from_arrays({"w": np.full((2, 3), np.nan, np.float32)}, ParamsKind.DELTA), 5)
    with pytest.raises(ParamsError):
        fold.add(bad)
    np.testing.assert_allclose(fold.finish()["w"], DELTAS["n0"], rtol=1e-6)


# -- the reorder buffer -----------------------------------------------------------------------

def test_reorder_buffer_releases_in_asked_order_and_skips_gaps():
    buffer = ReorderBuffer(["a", "b", "c", "d"])
    r = {v: FitResult(1, v, START, 1) for v in "abcd"}
    assert list(buffer.put("c", r["c"])) == []
    assert list(buffer.put("b", None)) == []  # b failed: nothing to release, a still missing
    assert buffer.expects("a") and not buffer.expects("b") and not buffer.expects("x")
    assert [x.node_id for x in buffer.put("a", r["a"])] == ["a", "c"]
    assert buffer.unanswered() == ["d"]
    assert [x.node_id for x in buffer.put("d", r["d"])] == ["d"]


# -- the frozen outcome of one attempt ----------------------------------------------------------

def test_a_committed_attempt_is_a_frozen_value_with_contributions_in_sampled_order():
    pool = ScriptedPool({v: honest for v in NODES}, order=lambda nodes: nodes[::-1])
    out = collector(pool).collect(1, 1, START, NODES, {"lr": 0.1}, plain_fold())
    assert isinstance(out, AttemptOutcome) and out.aggregate is not None and out.error == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.aggregate = None  # type: ignore[misc]
    assert [c.node_id for c in out.contributions] == NODES  # arrived backwards, folded in sampled order
    assert out.examples == sum(EXAMPLES.values()) and out.sampled == tuple(NODES)
    weighted = sum(LOSSES[v] * EXAMPLES[v] for v in NODES) / sum(EXAMPLES.values())
    assert out.train_loss == pytest.approx(weighted)
    assert out.bytes_up == sum(result(v).params.encoded_size for v in NODES)
    assert out.failures == () and out.absent == () and out.settings_digest
    assert {ins.config["lr"] for ins in pool.calls} == {0.1}


def test_failures_keep_node_kind_and_cause_and_nodes_absent_from_the_aggregate():
    def left(ins):
        raise NodeLeft(ins.node_id, "shutting down")

    def late(ins):
        raise NodeTimedOut(ins.node_id, "round deadline of 60 s passed")

    def refused(ins):
        raise NodeResultInvalid(ins.node_id, "bad signature")

    scripts = {"n0": honest, "n1": left, "n2": late, "n3": refused,
               "n4": lambda ins: result("n4", rnd=ins.round - 1)}
    out = collector(ScriptedPool(scripts), quorum=0.2).collect(2, 1, START, NODES, {}, plain_fold())
    assert out.aggregate is not None and len(out.contributions) == 1
    assert out.failures == (Failure("n1", "left", "shutting down"),
                            Failure("n2", "timed_out", "round deadline of 60 s passed"),
                            Failure("n3", "rejected", "bad signature"),
                            Failure("n4", "rejected", "a result for round 1, not 2"))
    assert out.failure_counts() == {"left": 1, "timed_out": 1, "rejected": 2}
    assert out.absent == (("n1", "left"), ("n2", "timed_out"), ("n3", "rejected"), ("n4", "rejected"))


def test_a_missed_quorum_discards_what_was_folded_and_names_each_kinds_first_cause():
    def broken(ins):
        raise RuntimeError(f"disk {ins.node_id} on fire")

    scripts = {"n0": honest, "n1": broken, "n2": broken, "n3": honest}
    out = collector(ScriptedPool(scripts), quorum=0.75).collect(1, 2, START, NODES[:4], {}, plain_fold())
    assert out.aggregate is None and out.attempt == 2 and {f.attempt for f in out.failures} == {2}
    assert out.error == "2 of 4 results usable, quorum needs 3 (2 failed, first n1: RuntimeError: disk n1 on fire)"
    assert out.absent == (("n1", "failed"), ("n2", "failed"), ("n0", "discarded"), ("n3", "discarded"))


def test_results_nobody_asked_for_and_second_results_are_rejected_without_an_absence():
    class Chatty(ScriptedPool):
        def fit(self, instructions, timeout):
            yield from super().fit(instructions, timeout)
            yield result("n0")  # a second result
            yield result("n4")  # never asked

    out = collector(Chatty({v: honest for v in NODES[:2]})).collect(1, 1, START, NODES[:2], {}, plain_fold())
    assert [f.cause for f in out.failures] == ["a second result", "a result nobody asked for"]
    assert out.absent == () and len(out.contributions) == 2


def test_a_pool_that_ends_without_an_outcome_still_folds_what_came_after_the_gap():
    class Forgetful(ScriptedPool):
        def fit(self, instructions, timeout):
            return (o for o in super().fit(instructions, timeout) if o.node_id != "n0")

    out = collector(Forgetful({v: honest for v in NODES[:3]})).collect(1, 1, START, NODES[:3], {}, plain_fold())
    assert [c.node_id for c in out.contributions] == ["n1", "n2"]
    assert out.failures == (Failure("n0", "failed", "the pool ended without an outcome for it"),)


def test_failure_helpers():
    assert failure_kind(NodeResultInvalid("a", "x")) == "rejected" and failure_kind(NodeLeft("a", "x")) == "left"
    long = failure("a", "failed", "x" * 1000)
    assert len(long.cause) == MAX_CAUSE and long.cause.endswith("…")
    assert describe([Failure("a", "failed", "boom"), Failure("b", "left", "bye"), Failure("c", "failed", "bang")]) \
        == "2 failed, first a: boom; 1 left, first b: bye"
    assert describe([]) == ""
