"""Virtual nodes cost bytes, not objects: lazy ids and data, the same splits as before."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from potluck.backends.inprocess import InProcessPool
from potluck.core.errors import NodeLeft
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.core.seeds import derive_seed, rng_for
from potluck.runtime.federation import FederationSpec, NodeIds, VirtualNodes, build_federation, stratified_split
from potluck.runtime.node import NodeData
from potluck.tasks.data.partition import partition


def test_node_ids_are_made_when_read():
    spec = FederationSpec(nodes=1234)
    ids = NodeIds(spec)
    assert len(ids) == 1234 and list(ids) == [spec.node_id(i) for i in range(1234)]
    assert ids[0] == "node-0000" and ids[-1] == "node-1233" and ids[5:8] == ["node-0005", "node-0006", "node-0007"]
    assert ids.index("node-0042") == 42 and "node-1233" in ids
    for bad in ("node-1234", "node-42", "node-00042", "n-0042", "node-+042", "node-\u0661\u0662\u0663\u0664", 42):
        assert bad not in ids
    with pytest.raises(IndexError):
        ids[1234]
    with pytest.raises(ValueError, match="not a node of this federation"):
        ids.index("node-1234")


def test_partitioned_nodes_match_the_eager_split():
    """The oracle is the eager construction the lazy one replaced."""
    spec = FederationSpec(nodes=10, seed=3)
    fed = build_federation(spec)
    data = fed.task.load_data(None)
    train_idx, _ = stratified_split(data.y, spec.test_fraction, derive_seed(spec.seed, "holdout"))
    train = data.subset(train_idx)
    parts = partition(train, spec.partition, spec.nodes, alpha=spec.alpha, seed=derive_seed(spec.seed, "partition"))
    assert len(fed.nodes) == 10 and list(fed.nodes) == [spec.node_id(i) for i in range(10)]
    for i, idx in enumerate(parts):
        shuffled = rng_for(spec.seed, "val", i).permutation(idx)
        n_val = int(len(idx) * spec.val_fraction) if len(idx) > 1 else 0
        node = fed.nodes[spec.node_id(i)]
        assert np.array_equal(node.train.x, train.x[np.sort(shuffled[n_val:])])
        assert np.array_equal(node.val.y, train.y[np.sort(shuffled[:n_val])])
        assert fed.nodes.has_validation(spec.node_id(i)) == (n_val > 0)
    assert fed.nodes.has_validation("node-010") is None
    with pytest.raises(KeyError):
        fed.nodes["node-010"]


def test_a_million_synthetic_nodes_cost_no_memory_until_sampled():
    spec = FederationSpec(task="synthetic", nodes=1_000_000, seed=5)
    tracemalloc.start()
    fed = build_federation(spec)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"building a million virtual nodes took {peak / 2**20:.1f} MiB"
    assert len(fed.nodes) == 1_000_000 and len(fed.test) == 100 * 50
    node = fed.nodes["node-999999"]
    assert np.array_equal(node.train.x, fed.task.node_data(derive_seed(5, "data"), 999_999).x)  # type: ignore[attr-defined]
    assert len(node.val) == 0 and fed.nodes.has_validation("node-999999") is False


class Exploding:
    def __call__(self, i: int) -> NodeData:
        raise AssertionError(f"node {i}'s data was made")


def test_the_in_process_pool_makes_a_node_only_when_it_fits():
    spec = FederationSpec(task="synthetic", nodes=10**7)
    fed = build_federation(spec)
    made: list[int] = []

    def make(i: int) -> NodeData:
        made.append(i)
        return fed.nodes[spec.node_id(i)]

    pool = InProcessPool(fed.task, VirtualNodes(spec, make, lambda i: False))
    assert pool.node_ids() is pool.runner.data.ids  # type: ignore[attr-defined]
    outcomes = list(pool.fit([FitInstruction(1, "node-0000007", fed.initial_params, {}, 1)], 60))
    assert made == [7] and outcomes[0].node_id == "node-0000007"  # type: ignore[union-attr]
    idle = InProcessPool(fed.task, VirtualNodes(spec, Exploding(), lambda i: False))
    (result,) = idle.evaluate([EvaluateInstruction(1, "node-0000003", fed.initial_params)], 60)
    assert result.num_examples == 0 and np.isnan(result.loss)  # type: ignore[union-attr]
    (gone,) = idle.fit([FitInstruction(1, "node-x", fed.initial_params, {}, 1)], 60)
    assert isinstance(gone, NodeLeft)
