"""The butterfly all-reduce against numpy's weighted mean, with and without a lost member."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import NonFiniteError, SchemaMismatch, StrategyError
from potluck.peer.allreduce import PartReducer, butterfly, group_digest, part_bounds


def _group(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = {f"p{i}": rng.normal(size=size).astype(np.float32) for i in range(n)}
    weights = {f"p{i}": float(rng.integers(1, 100)) for i in range(n)}
    return vectors, weights


def test_part_bounds_cover_the_vector_in_near_equal_parts():
    assert part_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert part_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]
    with pytest.raises(StrategyError):
        part_bounds(5, 0)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [1, 17, 1000])
def test_every_member_ends_with_the_weighted_mean(n, size):
    vectors, weights = _group(n, size, seed=n * size)
    names = sorted(vectors)
    expected = np.average(np.stack([vectors[k] for k in names]), axis=0, weights=[weights[k] for k in names])
    outcomes = butterfly(vectors, weights)
    for name in names:
        assert outcomes[name].complete
        np.testing.assert_allclose(outcomes[name].values, expected, rtol=1e-5, atol=1e-6)
    digests = {outcomes[k].values.tobytes() for k in names}
    assert len(digests) == 1, "all members hold bit-identical results"


@pytest.mark.parametrize("n", [3, 4, 5])
def test_a_member_dropped_midway_leaves_the_weighted_mean_of_what_arrived(n):
    """The last member dies after reaching owner 0 only: every other part is the mean of
    the survivors, part 0 includes it, and its own part is orphaned (zero on every survivor)."""
    vectors, weights = _group(n, 300, seed=n)
    names = sorted(vectors)
    dead = names[-1]

    def delivered(sender, receiver, phase):
        if dead in (sender, receiver):
            return sender == dead and receiver == names[0] and phase == "reduce"
        return True

    outcomes = butterfly(vectors, weights, delivered)
    bounds = part_bounds(300, n)
    for name in names[:-1]:
        out = outcomes[name]
        assert out.missing_parts == (n - 1,)
        for part, (start, stop) in enumerate(bounds):
            senders = names if part == 0 else names[:-1]
            if part == n - 1:
                expected = np.zeros(stop - start)  # orphaned: skipped alike everywhere
            else:
                stack = np.stack([vectors[k][start:stop] for k in senders])
                expected = np.average(stack, axis=0, weights=[weights[k] for k in senders])
            np.testing.assert_allclose(out.values[start:stop], expected, rtol=1e-5, atol=1e-6)
        assert out.contributors[0] == tuple(names)
        assert out.contributors[1] == tuple(names[:-1])


def test_the_reducer_refuses_bad_chunks_with_specific_errors():
    reducer = PartReducer(0, 3, ["a", "b"])
    reducer.add("a", np.ones(3, np.float32), 2.0)
    with pytest.raises(StrategyError, match="second chunk"):
        reducer.add("a", np.ones(3, np.float32), 2.0)
    with pytest.raises(StrategyError, match="not a member"):
        reducer.add("c", np.ones(3, np.float32), 1.0)
    with pytest.raises(SchemaMismatch):
        reducer.add("b", np.ones(4, np.float32), 1.0)
    with pytest.raises(NonFiniteError):
        reducer.add("b", np.array([1, np.nan, 0], np.float32), 1.0)
    with pytest.raises(StrategyError, match="weight"):
        reducer.add("b", np.ones(3, np.float32), 0.0)
    assert not reducer.complete
    reducer.add("b", np.zeros(3, np.float32), 6.0)
    assert reducer.complete
    np.testing.assert_allclose(reducer.result().values, np.full(3, 0.25))
    with pytest.raises(StrategyError, match="no chunk"):
        PartReducer(1, 3, ["a"]).result()


def test_the_group_digest_ignores_member_order_but_not_the_step():
    assert group_digest(3, ["b", "a"]) == group_digest(3, ["a", "b"]) != group_digest(4, ["a", "b"])
