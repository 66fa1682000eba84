"""The SecAgg+ state machines driven directly: exact sums with dropouts, refusals, masking hides."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import StrategyError
from potluck.updates.secagg.protocol import NodeSession, ServerSession, node_step, pack

SIZE = 500


def session(n: int, k: int, t: int):
    nodes = [f"n{i:02d}" for i in range(n)]
    server = ServerSession("3.1", nodes, degree=k, threshold=t, seed=9)
    states = {v: {} for v in nodes}
    server.collect_advertise({v: node_step(states[v], v, "advertise", r) for v, r in server.advertise_requests().items()})
    server.collect_share({v: node_step(states[v], v, "share", r) for v, r in server.share_requests().items()})
    for v, r in server.deliver_requests().items():
        node_step(states[v], v, "deliver", r)
    inputs = {v: np.random.default_rng(i).integers(0, 2**16, SIZE, dtype=np.uint32) for i, v in enumerate(nodes)}
    return server, states, inputs


def finish(server, states, silent=()):
    return server.collect_unmask({v: node_step(states[v], v, "unmask", r)
                                  for v, r in server.unmask_requests().items() if v not in silent})


@pytest.mark.parametrize("dropped", [0, 3])
def test_sum_is_exact_with_and_without_dropouts_before_the_masked_input(dropped):
    server, states, inputs = session(10, 6, 4)
    gone = sorted(inputs)[:dropped]
    for v, x in inputs.items():
        masked = states[v]["session"].mask(x)
        if v not in gone:
            server.add(v, masked)
    expected = sum(x.astype(np.uint64) for v, x in inputs.items() if v not in gone).astype(np.uint32)
    np.testing.assert_array_equal(finish(server, states), expected)


def test_nodes_that_leave_after_their_masked_input_are_unmasked_by_neighbours():
    server, states, inputs = session(10, 9, 5)
    for v, x in inputs.items():
        server.add(v, states[v]["session"].mask(x))
    silent = sorted(inputs)[:3]
    np.testing.assert_array_equal(finish(server, states, silent), sum(inputs.values()))


def test_too_many_dropouts_for_the_threshold_fail_clearly():
    server, states, inputs = session(8, 7, 6)
    for v, x in list(inputs.items())[:5]:  # 3 of 8 never send: survivors keep only 4 answering neighbours
        server.add(v, states[v]["session"].mask(x))
    with pytest.raises(StrategyError, match="threshold"):
        finish(server, states)


def test_a_masked_input_looks_uniform_and_uncorrelated():
    server, states, _ = session(6, 5, 3)
    x = np.random.default_rng(0).integers(0, 2**16, 200_000, dtype=np.uint32)
    y = states["n00"]["session"].mask(x)
    assert abs(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]) < 0.01
    counts = np.bincount((y >> 28).astype(np.int64), minlength=16)  # top 4 bits: 16 equal bins expected
    assert abs(counts / y.size - 1 / 16).max() < 0.005


def test_a_node_masks_once_and_never_reveals_both_shares():
    server, states, inputs = session(5, 4, 3)
    me = states["n00"]["session"]
    me.mask(inputs["n00"])
    with pytest.raises(StrategyError, match="already"):
        me.mask(inputs["n00"])
    overlap = pack({"session": "3.1", "survivors": ["n01", "n02", "n03"], "dropped": ["n01"]})
    with pytest.raises(StrategyError, match="both"):
        me.handle("unmask", overlap)
    with pytest.raises(StrategyError, match="session"):
        me.handle("unmask", pack({"session": "4.1"}))


def test_shares_are_bound_to_their_recipient():
    server, states, _ = session(5, 4, 3)
    a, b = states["n00"]["session"], states["n01"]["session"]
    b.received["n02"] = a.received["n02"]  # a ciphertext meant for n00 replayed to n01
    b.masked = True
    with pytest.raises(StrategyError, match="decrypt"):
        b.handle("unmask", pack({"session": "3.1", "survivors": ["n00", "n02", "n03", "n04"], "dropped": []}))
    assert isinstance(a, NodeSession)
