"""Secure aggregation through the coordinator: exact sums with dropouts, clear failures, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError, NodeLeft, RoundFailed
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.core.records import Failure
from potluck.core.seeds import rng_for
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.runtime.pool import ExchangeReply, NodePool
from potluck.runtime.secure import SecureAggregation
from potluck.strategies import make_strategy
from potluck.updates.pipeline import UpdatePipeline
from potluck.updates.secagg.masking import dequantise_sum, quantise
from potluck.updates.secagg.protocol import node_step

NODES = [f"n{i}" for i in range(10)]
DELTAS = {v: np.random.default_rng(i).normal(0, 0.2, (40, 25)).astype(np.float32) for i, v in enumerate(NODES)}
START = Params.from_arrays({"w": np.zeros((40, 25), np.float32)})
CLIP, BITS = 1.0, 16


class SecurePool(NodePool):
    """Nodes with fixed deltas that run the real pipeline and protocol; some may drop
    (``before`` the fit, ``after`` it, or ``silent`` from the first protocol step on)."""

    def __init__(self, before=(), after=(), silent=()):
        self.state = {v: {} for v in NODES}
        self.before, self.after, self.silent = set(before), set(after), set(silent)
        self.seeds: dict[str, int] = {}

    def node_ids(self):
        return NODES

    def exchange(self, step, payloads, timeout):
        for v, payload in payloads.items():
            if step == "secagg/unmask" and v in self.after or v in self.silent:
                yield NodeLeft(v, "gone")
            else:
                yield ExchangeReply(v, node_step(self.state[v].setdefault("secagg", {}), v, step.split("/")[1], payload))

    def fit(self, instructions: list[FitInstruction], timeout):
        for ins in instructions:
            pipeline, _ = UpdatePipeline.from_config(ins.config)
            wire = pipeline.encode(Params.from_arrays({"w": DELTAS[ins.node_id]}, ParamsKind.DELTA), self.state[ins.node_id], ins.seed)
            self.seeds[ins.node_id] = ins.seed
            yield NodeLeft(ins.node_id, "gone") if ins.node_id in self.before else FitResult(ins.round, ins.node_id, wire, 10)

    def evaluate(self, instructions, timeout):
        return iter(())

    def close(self):
        pass


def run(pool, **policy):
    secure = SecureAggregation(degree=8, threshold=5, clip=CLIP, bits=BITS, seed=1)
    coordinator = Coordinator(pool, make_strategy("fedavg"), RoundPolicy(**{"rounds": 1, "max_retries": 0, **policy}),
                              updates=UpdatePipeline([secure.stage]), secure=secure)
    params, record = coordinator.run_round(1, START)
    return params, record, secure


def plain_quantised_sum(pool, nodes):
    return sum(quantise(DELTAS[v].reshape(-1), CLIP, BITS, rng_for(pool.seeds[v], "update", "secagg")).astype(np.uint64)
               for v in nodes)


@pytest.mark.parametrize("before, after", [((), ()), (NODES[:3], ()), ((), NODES[3:6])])
def test_unmasked_sum_equals_the_plain_quantised_sum_exactly(before, after):
    pool = SecurePool(before, after)
    params, record, secure = run(pool)
    survivors = [v for v in NODES if v not in before]
    expected = plain_quantised_sum(pool, survivors)
    np.testing.assert_array_equal(secure.last_codes, expected)
    mean = (dequantise_sum(expected, len(survivors), CLIP, BITS) / len(survivors)).astype(np.float32)
    np.testing.assert_array_equal(params["w"].reshape(-1), mean)
    assert record.num_nodes == len(survivors) and record.failures.get("left", 0) == len(before)
    np.testing.assert_allclose(params["w"], np.mean([DELTAS[v] for v in survivors], axis=0), atol=1e-4)


def test_more_dropouts_than_the_threshold_allows_fail_the_round_naming_the_dropouts():
    with pytest.raises(RoundFailed, match=r"threshold.*\(6 left, first n0: gone\)"):
        run(SecurePool(before=NODES[:6]), quorum=0.3)


def secure_fold(pool):
    secure = SecureAggregation(degree=8, threshold=5, clip=CLIP, bits=BITS, seed=1)
    return secure, secure.fold(pool, 1, 1, START.schema, timeout=60.0)


def masked_result(pool, secure, node, session):
    pipeline, _ = UpdatePipeline.from_config({**UpdatePipeline([secure.stage]).to_config(), "update.secagg.session": session})
    pool.seeds[node] = 100 + NODES.index(node)
    wire = pipeline.encode(Params.from_arrays({"w": DELTAS[node]}, ParamsKind.DELTA), pool.state[node], pool.seeds[node])
    return FitResult(1, node, wire, 10)


def test_secure_fold_sets_up_keys_folds_masked_results_and_unmasks_the_exact_sum():
    pool = SecurePool(silent=["n9"])
    secure, fold = secure_fold(pool)
    ready, dropped = fold.setup(NODES)
    assert ready == NODES[:9]
    assert dropped == [Failure("n9", "left", "secagg/advertise: gone")]
    session = fold.fit_config()["update.secagg.session"]
    assert session == "1.1"
    for node in reversed(ready):  # the ring sum is exact: order cannot matter
        fold.add(masked_result(pool, secure, node, session))
    params = fold.finish()
    expected = plain_quantised_sum(pool, ready)
    np.testing.assert_array_equal(secure.last_codes, expected)
    mean = (dequantise_sum(expected, len(ready), CLIP, BITS) / len(ready)).astype(np.float32)
    np.testing.assert_array_equal(params["w"].reshape(-1), mean)


def test_secure_fold_refuses_a_plain_update_and_a_second_masked_one():
    from potluck.core.errors import ParamsError

    pool = SecurePool()
    secure, fold = secure_fold(pool)
    fold.setup(NODES)
    with pytest.raises(ParamsError, match="masked update"):
        fold.add(FitResult(1, "n0", Params.from_arrays({"w": DELTAS["n0"]}, ParamsKind.DELTA), 10))
    good = masked_result(pool, secure, "n1", fold.fit_config()["update.secagg.session"])
    fold.add(good)
    with pytest.raises(ParamsError, match="unexpected masked input from n1"):
        fold.add(good)


def test_a_pool_that_cannot_relay_protocol_messages_is_named():
    from potluck.testing import ScriptedPool

    _, fold = secure_fold(ScriptedPool({v: lambda ins: None for v in NODES}))
    with pytest.raises(ConfigError, match="ScriptedPool cannot relay protocol messages"):
        fold.setup(NODES)


def test_robust_strategies_and_compression_are_refused_under_masking():
    from potluck.apps.protections import secure_aggregation

    with pytest.raises(ConfigError, match="median"):
        secure_aggregation(SimulationConfig(secagg=True, strategy="median"))
    with pytest.raises(ConfigError, match="compression"):
        SimulationConfig(secagg=True, compression="quantize")
    with pytest.raises(ConfigError, match="unless secagg"):
        SimulationConfig(secagg_clip=2.0)
    with pytest.raises(ConfigError, match="wrap"):
        SimulationConfig(secagg=True, nodes=200, secagg_bits=28)
