"""Who masks and shares with whom: a k-regular neighbourhood over a round's nodes.

Bell et al. 2020 replace Bonawitz et al.'s complete graph with a sparse one, so that a
node's work and traffic grow with k = O(log n) instead of n. We use a Harary graph
H(k, n) over a seeded random permutation of the nodes: placed on a ring in permuted
order, each node is joined to the k/2 nodes on either side. Every node has exactly k
neighbours; the seed (the server's, per round) decides which. k ≥ n − 1 gives the
complete graph (plain SecAgg); otherwise k must be even.

>>> neighbourhoods(["a", "b", "c", "d", "e"], 2, seed=0) == neighbourhoods(["a", "b", "c", "d", "e"], 2, seed=0)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from potluck.core.errors import ConfigError
from potluck.core.seeds import rng_for


def default_degree(nodes: int) -> int:
    """The smallest even k ≥ 2·⌈log2 n⌉ (capped at n − 1): Bell et al.'s O(log n) degree."""
    if nodes <= 1:
        return 0
    k = 2 * math.ceil(math.log2(nodes))
    return min(nodes - 1, k + (k % 2))


def neighbourhoods(nodes: Sequence[str], k: int, seed: int) -> dict[str, frozenset[str]]:
    """Each node's neighbours in H(min(k, n − 1), n) over the nodes permuted by ``seed``.

    The relation is symmetric and irreflexive; every node has min(k, n − 1) neighbours."""
    n = len(nodes)
    if len(set(nodes)) != n:
        raise ConfigError("secure aggregation: node ids in a round must be distinct")
    if k >= n - 1:
        return {v: frozenset(u for u in nodes if u != v) for v in nodes}
    if k < 1 or k % 2:
        raise ConfigError(f"secagg_neighbours must be even (or ≥ nodes − 1), got {k}")
    order = [nodes[i] for i in rng_for(seed, "secagg-graph").permutation(n)]
    half = k // 2
    return {
        v: frozenset(order[(pos + step) % n] for step in range(-half, half + 1) if step)
        for pos, v in enumerate(order)
    }
