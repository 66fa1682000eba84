"""The k-regular neighbourhood (Harary graph over a seeded permutation)."""

from __future__ import annotations

import pytest

from potluck.core.errors import ConfigError
from potluck.updates.secagg.graph import default_degree, neighbourhoods

NODES = [f"n{i:02d}" for i in range(30)]


def test_graph_is_k_regular_symmetric_and_seeded():
    graph = neighbourhoods(NODES, 6, seed=1)
    assert all(len(near) == 6 and v not in near for v, near in graph.items())
    assert all(v in graph[u] for v, near in graph.items() for u in near)
    assert graph == neighbourhoods(NODES, 6, seed=1) != neighbourhoods(NODES, 6, seed=2)


def test_large_k_is_the_complete_graph_and_odd_k_is_refused():
    assert neighbourhoods(NODES[:5], 8, seed=0)["n00"] == frozenset(NODES[1:5])
    with pytest.raises(ConfigError, match="even"):
        neighbourhoods(NODES, 5, seed=0)


def test_default_degree_grows_like_log_n():
    assert [default_degree(n) for n in (1, 2, 5, 10, 100, 1000)] == [0, 1, 4, 8, 14, 20]
