"""Secure aggregation through the coordinator: exact sums with dropouts, clear failures, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError, NodeLeft, RoundFailed
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.core.seeds import rng_for
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.runtime.pool import ExchangeReply
from potluck.runtime.secure import SecureAggregation
from potluck.strategies import make_strategy
from potluck.updates.pipeline import UpdatePipeline
from potluck.updates.secagg.masking import dequantise_sum, quantise
from potluck.updates.secagg.protocol import node_step

NODES = [f"n{i}" for i in range(10)]
DELTAS = {v: np.random.default_rng(i).normal(0, 0.2, (40, 25)).astype(np.float32) for i, v in enumerate(NODES)}
START = Params.from_arrays({"w": np.zeros((40, 25), np.float32)})
CLIP, BITS = 1.0, 16


class SecurePool:
    """Nodes with fixed deltas that run the real pipeline and protocol; some may drop."""

    def __init__(self, before=(), after=()):
        self.state = {v: {} for v in NODES}
        self.before, self.after = set(before), set(after)
        self.seeds: dict[str, int] = {}

    def node_ids(self):
        return NODES

    def exchange(self, step, payloads, timeout):
        for v, payload in payloads.items():
            if step == "secagg/unmask" and v in self.after:
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


def test_more_dropouts_than_the_threshold_allows_fail_the_round():
    with pytest.raises(RoundFailed, match="threshold"):
        run(SecurePool(before=NODES[:6]), quorum=0.3)


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
