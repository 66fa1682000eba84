"""Split a data set's example indices across nodes, IID or in the usual non-IID ways.

Every partitioner returns one sorted int64 index array per node. Together the arrays
hold every index ``0..N-1`` exactly once, and no array is empty. The split depends
only on the arguments: randomness comes from ``np.random.default_rng(seed)``.

Bad parameters (``num_nodes < 1``, ``alpha <= 0``, an unknown scheme) raise
:class:`~potluck.core.errors.ConfigError`; data that cannot be split as asked (more
nodes than examples, a node left empty) raises :class:`~potluck.core.errors.DataError`.
"""

from __future__ import annotations

import math

import numpy as np

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data.dataset import Dataset

SCHEMES = ("contiguous", "dirichlet", "iid", "natural", "shards")

def iid(num_examples: int, num_nodes: int, seed: int) -> list[np.ndarray]:
    """Shuffle the indices and deal them out; node sizes differ by at most one."""
    _check_sizes(num_examples, num_nodes)
    order = np.random.default_rng(seed).permutation(num_examples)
    return _finish(np.array_split(order, num_nodes), "iid")


def contiguous(num_examples: int, num_nodes: int) -> list[np.ndarray]:
    """Consecutive runs of examples in data-set order; node sizes differ by at most one.

    For text cut into blocks, each node holds one contiguous stretch of the text (the
    first node the beginning, the last node the end), the most non-IID split a single
    document allows. Needs no seed.
    """
    _check_sizes(num_examples, num_nodes)
    return _finish(np.array_split(np.arange(num_examples), num_nodes), "contiguous")


def dirichlet(
    labels: np.ndarray, num_nodes: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label skew: each class is spread over the nodes in Dirichlet(alpha) proportions.

    Small ``alpha`` (0.1) gives each node a few dominant classes; large ``alpha`` (100)
    approaches an IID split. A node the draw leaves with fewer than ``min_size``
    examples is topped up with examples moved, one at a time, from the node then
    holding the most (a random one of its examples, seeded), as common FL benchmarks
    do; a draw where every node has enough is kept as it is. So the split never fails
    for lack of examples: only ``min_size * num_nodes`` over the data is a DataError.
    """
    y = _labels(labels)
    _check_sizes(len(y), num_nodes)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"dirichlet alpha must be a positive number, got {alpha}")
    if min_size < 1:
        raise ConfigError(f"dirichlet min_size must be at least 1, got {min_size}")
    if min_size * num_nodes > len(y):
        raise DataError(
            f"dirichlet: {len(y)} examples cannot give {num_nodes} nodes {min_size} each; "
            "use fewer nodes or a smaller --min-examples"
        )
    rng = np.random.default_rng(seed)
    concentration = np.full(num_nodes, float(alpha))
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        share = rng.dirichlet(concentration)
        cuts = np.floor(np.cumsum(share)[:-1] * len(members)).astype(np.int64)
        for node, chunk in enumerate(np.split(members, np.clip(cuts, 0, len(members)))):
            pieces[node].append(chunk)
    parts = [np.concatenate(p) for p in pieces]
    return _finish(_top_up(parts, min_size, rng), "dirichlet")


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Give every part at least ``min_size`` indices, each moved from the part then
    largest (the lowest-numbered among equals). Parts already large enough are returned
    unchanged, and so is the whole list when no part is short."""
    sizes = np.array([len(p) for p in parts])
    if sizes.min() >= min_size:
        return parts
    parts = list(parts)
    for node in np.flatnonzero(sizes < min_size):
        moved: list[int] = []
        while sizes[node] < min_size:
            donor = int(np.argmax(sizes))
            pick = int(rng.integers(len(parts[donor])))
            moved.append(int(parts[donor][pick]))
            parts[donor] = np.delete(parts[donor], pick)
            sizes[donor] -= 1
            sizes[node] += 1
        parts[node] = np.concatenate([parts[node], np.array(moved, dtype=np.int64)])
    return parts


def label_shards(
    labels: np.ndarray, num_nodes: int, seed: int, shards_per_node: int = 2
) -> list[np.ndarray]:
    """The pathological non-IID split of McMahan et al. (2017).

    Indices sorted by label are cut into ``shards_per_node * num_nodes`` contiguous
    shards (sizes differ by at most one when they do not divide evenly) and each node
    gets ``shards_per_node`` shards at random, so it sees only a few classes.
    """
    y = _labels(labels)
    _check_sizes(len(y), num_nodes)
    if shards_per_node < 1:
        raise ConfigError(f"shards_per_node must be at least 1, got {shards_per_node}")
    num_shards = shards_per_node * num_nodes
    if num_shards > len(y):
        raise DataError(
            f"shards: cannot cut {len(y)} examples into {num_shards} shards "
            f"({num_nodes} nodes x {shards_per_node} shards each)"
        )
    rng = np.random.default_rng(seed)
    # Shuffle before the stable sort so the order within a class is seeded, not file order.
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_nodes, shards_per_node)
    return _finish([np.concatenate([shards[s] for s in row]) for row in owners], "shards")


def natural(groups: np.ndarray | None, num_nodes: int | None = None) -> list[np.ndarray]:
    """One node per distinct group value (in sorted order of the values).

    With ``num_nodes`` smaller than the number of groups, whole groups are dealt
    round-robin (sorted group ``k`` goes to node ``k % num_nodes``); more nodes than
    groups leaves nodes empty, which is a DataError.
    """
    if groups is None:
        raise DataError("this data set has no group column; pass --group-column")
    g = np.asarray(groups).reshape(-1)
    values, group_of = np.unique(g, return_inverse=True)
    group_of = group_of.reshape(-1)
    if num_nodes is None:
        num_nodes = max(len(values), 1)  # no rows at all is reported by _check_sizes
    _check_sizes(len(g), num_nodes)
    if num_nodes > len(values):
        raise DataError(
            f"natural partition: node {len(values)} would get no examples: "
            f"the data has {len(values)} groups for {num_nodes} nodes"
        )
    node_of = (np.arange(len(values)) % num_nodes)[group_of]
    order = np.argsort(node_of, kind="stable")
    bounds = np.cumsum(np.bincount(node_of, minlength=num_nodes))[:-1]
    return _finish(np.split(order, bounds), "natural")


def partition(
    dataset: Dataset, scheme: str, num_nodes: int, *, alpha: float = 0.5, seed: int = 0, min_examples: int = 1
) -> list[np.ndarray]:
    """Split ``dataset`` with one of :data:`SCHEMES`; ``alpha`` and ``min_examples`` (the
    fewest examples a node gets) are used by dirichlet only.

    >>> parts = partition(ds, "dirichlet", 10, alpha=0.1, seed=1)  # doctest: +SKIP
    >>> shards = [ds.subset(p) for p in parts]  # doctest: +SKIP
    """
    if scheme == "iid":
        return iid(len(dataset), num_nodes, seed)
    if scheme == "contiguous":
        return contiguous(len(dataset), num_nodes)
    if scheme == "dirichlet":
        return dirichlet(dataset.y, num_nodes, alpha, seed, min_size=min_examples)
    if scheme == "shards":
        return label_shards(dataset.y, num_nodes, seed)
    if scheme == "natural":
        return natural(dataset.groups, num_nodes)
    raise ConfigError(f"unknown partition scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")


def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one value per example, got shape {y.shape}")
    return y


def _check_sizes(num_examples: int, num_nodes: int) -> None:
    if num_nodes < 1:
        raise ConfigError(f"num_nodes must be at least 1, got {num_nodes}")
    if num_nodes > num_examples:
        raise DataError(f"cannot split {num_examples} examples across {num_nodes} nodes")


def _finish(parts: list[np.ndarray], scheme: str) -> list[np.ndarray]:
    """Sort each part as int64; an empty part is a DataError naming the node."""
    out = [np.sort(p).astype(np.int64, copy=False) for p in parts]
    for node, p in enumerate(out):
        if len(p) == 0:
            raise DataError(f"{scheme} partition: node {node} got no examples")
    return out
