"""Partitioners: exact cover, determinism, the skew each scheme promises, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data import Dataset, dirichlet, iid, label_shards, natural, partition


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    """Every index 0..n-1 exactly once; each part sorted, int64 and non-empty."""
    for p in parts:
        assert p.dtype == np.int64 and len(p) > 0
        assert np.all(np.diff(p) > 0)
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes), per_class)


def make_dataset(y: np.ndarray, groups: np.ndarray | None = None) -> Dataset:
    return Dataset(np.zeros((len(y), 2), np.float32), y.astype(np.int64), groups)


def mean_max_class_fraction(parts: list[np.ndarray], y: np.ndarray) -> float:
    return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))


# --- iid ---------------------------------------------------------------------------


def test_iid_even_sizes_and_cover() -> None:
    parts = iid(103, 10, seed=0)
    assert_exact_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_iid_single_node_gets_everything() -> None:
    (only,) = iid(7, 1, seed=3)
    np.testing.assert_array_equal(only, np.arange(7))


# --- dirichlet ---------------------------------------------------------------------


def test_dirichlet_cover_and_min_size() -> None:
    y = balanced_labels(10, 50)
    parts = dirichlet(y, 20, alpha=0.5, seed=1, min_size=5)
    assert_exact_cover(parts, len(y))
    assert min(len(p) for p in parts) >= 5


def test_dirichlet_small_alpha_is_more_skewed_than_large() -> None:
    y = balanced_labels(10, 200)
    skewed = mean_max_class_fraction(dirichlet(y, 10, alpha=0.1, seed=0), y)
    near_iid = mean_max_class_fraction(dirichlet(y, 10, alpha=100.0, seed=0), y)
    # IID would give ~0.1 + noise; alpha=0.1 leaves most nodes dominated by one class.
    assert near_iid < 0.2
    assert skewed > 0.5
    assert skewed > 3 * near_iid


def test_dirichlet_works_with_non_contiguous_labels() -> None:
    y = np.array([3, 3, 7, 7, 7, 42, 42, 3, 7, 42] * 5)
    assert_exact_cover(dirichlet(y, 4, alpha=1.0, seed=2), len(y))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha must be a positive number"):
        dirichlet(balanced_labels(2, 10), 2, alpha=alpha, seed=0)


def test_dirichlet_tops_up_short_nodes_from_the_largest() -> None:
    y = balanced_labels(2, 10)  # 20 examples; alpha=0.001 puts nearly all of a class on one node
    parts = dirichlet(y, 10, alpha=0.001, seed=0, min_size=2)
    assert [len(p) for p in parts] == [2] * 10
    assert_exact_cover(parts, len(y))
    with pytest.raises(DataError, match="cannot give 10 nodes 3 each"):
        dirichlet(y, 10, alpha=1.0, seed=0, min_size=3)


def test_dirichlet_with_more_nodes_than_a_draw_fills_works_and_is_seeded() -> None:
    y = balanced_labels(10, 140)  # 1400 examples over 1000 nodes, like --nodes 1000 on digits
    parts = dirichlet(y, 1000, alpha=0.5, seed=3)
    assert min(len(p) for p in parts) >= 1
    assert_exact_cover(parts, len(y))
    again = dirichlet(y, 1000, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_keeps_a_draw_where_every_node_has_enough() -> None:
    y = balanced_labels(10, 100)
    plain, floored = dirichlet(y, 5, alpha=100.0, seed=1), dirichlet(y, 5, alpha=100.0, seed=1, min_size=50)
    assert min(len(p) for p in plain) >= 50
    assert all(np.array_equal(a, b) for a, b in zip(plain, floored))


def test_dirichlet_top_up_moves_only_what_is_needed() -> None:
    y = balanced_labels(4, 50)
    plain, floored = dirichlet(y, 8, alpha=0.05, seed=2), dirichlet(y, 8, alpha=0.05, seed=2, min_size=10)
    assert min(len(p) for p in floored) >= 10
    assert sum(abs(len(a) - len(b)) for a, b in zip(plain, floored)) == 2 * sum(
        max(0, 10 - len(a)) for a in plain)


# --- shards ------------------------------------------------------------------------


def test_shards_give_at_most_two_labels_per_node() -> None:
    y = balanced_labels(10, 100)
    parts = label_shards(y, 5, seed=0)
    assert_exact_cover(parts, len(y))
    for p in parts:
        assert len(p) == 200
        assert len(np.unique(y[p])) <= 2


def test_shards_uneven_sizes_still_cover() -> None:
    y = np.random.default_rng(0).integers(0, 7, size=1001)
    parts = label_shards(y, 9, seed=4, shards_per_node=3)
    assert_exact_cover(parts, len(y))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 3


def test_shards_need_enough_examples_and_sane_parameters() -> None:
    with pytest.raises(DataError, match="cannot cut 15 examples into 20 shards"):
        label_shards(balanced_labels(3, 5), 10, seed=0)
    with pytest.raises(ConfigError, match="shards_per_node"):
        label_shards(balanced_labels(3, 5), 2, seed=0, shards_per_node=0)


# --- natural -----------------------------------------------------------------------


def test_natural_one_node_per_sorted_group() -> None:
    groups = np.array(["b", "a", "c", "a", "b", "b"])
    parts = natural(groups)
    assert_exact_cover(parts, len(groups))
    assert [p.tolist() for p in parts] == [[1, 3], [0, 4, 5], [2]]  # a, b, c


def test_natural_round_robin_over_fewer_nodes() -> None:
    groups = np.array([10, 20, 30, 40, 50, 10, 30])
    parts = natural(groups, num_nodes=2)
    # sorted groups 10,20,30,40,50 -> nodes 0,1,0,1,0
    assert [p.tolist() for p in parts] == [[0, 2, 4, 5, 6], [1, 3]]


def test_natural_without_groups() -> None:
    with pytest.raises(DataError, match="no group column; pass --group-column"):
        natural(None)
    with pytest.raises(DataError, match="no group column"):
        partition(make_dataset(np.arange(4)), "natural", 2)


def test_natural_more_nodes_than_groups_is_an_empty_partition() -> None:
    with pytest.raises(DataError, match=r"natural partition: node 2 would get no examples.*2 groups for 4 nodes"):
        natural(np.array(["a", "b", "a", "b", "a"]), num_nodes=4)


# --- partition() and shared checks ---------------------------------------------------


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "natural"])
def test_partition_dispatch_is_deterministic(scheme: str) -> None:
    y = balanced_labels(10, 40)
    ds = make_dataset(y, groups=np.arange(len(y)) % 8)
    first = partition(ds, scheme, 8, alpha=0.3, seed=5)
    again = partition(ds, scheme, 8, alpha=0.3, seed=5)
    assert_exact_cover(first, len(y))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    if scheme != "natural":  # natural has no randomness
        other = partition(ds, scheme, 8, alpha=0.3, seed=6)
        assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_partition_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown partition scheme 'pathological'.*dirichlet, iid, natural, shards"):
        partition(make_dataset(np.arange(4)), "pathological", 2)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "natural"])
def test_too_many_nodes(scheme: str) -> None:
    ds = make_dataset(np.arange(50) % 5, groups=np.arange(50))
    with pytest.raises(DataError, match="cannot split 50 examples across 100 nodes"):
        partition(ds, scheme, 100)


@pytest.mark.parametrize("num_nodes", [0, -3])
def test_num_nodes_must_be_positive(num_nodes: int) -> None:
    with pytest.raises(ConfigError, match="num_nodes must be at least 1"):
        iid(10, num_nodes, seed=0)


def test_labels_must_be_one_dimensional() -> None:
    with pytest.raises(DataError, match="one value per example"):
        dirichlet(np.zeros((4, 2)), 2, alpha=1.0, seed=0)


# --- properties --------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 400),
    nodes=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_property_exact_cover(n: int, nodes: int, seed: int) -> None:
    if nodes > n:
        with pytest.raises(DataError):
            iid(n, nodes, seed)
        return
    parts = iid(n, nodes, seed)
    assert len(parts) == nodes
    assert_exact_cover(parts, n)


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=300),
    nodes=st.integers(1, 10),
    alpha=st.floats(0.05, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_property_exact_cover(labels: list[int], nodes: int, alpha: float, seed: int) -> None:
    y = np.array(labels)
    if nodes > len(y):
        with pytest.raises(DataError, match="cannot split"):
            dirichlet(y, nodes, alpha, seed)
        return
    parts = dirichlet(y, nodes, alpha, seed)  # never fails for lack of examples: short nodes are topped up
    assert len(parts) == nodes
    assert_exact_cover(parts, len(y))
