"""DiLoCo's outer step against a hand computation of SGD with Nesterov momentum."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import ConfigError, NonFiniteError, SchemaMismatch
from potluck.core.params import Params
from potluck.peer.diloco import NesterovOuter, flatten, pseudo_gradient, unflatten


def _model(w, b, steps=0):
    return Params.from_arrays({"w": np.array(w, np.float32), "b": np.array(b, np.float32),
                               "steps": np.array(steps, np.int64)})


def test_flatten_and_unflatten_are_inverse_and_skip_integer_arrays():
    p = _model([[1, 2], [3, 4]], [5], steps=7)
    vec = flatten(p)
    assert vec.tolist() == [1, 2, 3, 4, 5]
    back = unflatten(vec, p)
    assert back.digest == p.digest
    with pytest.raises(SchemaMismatch):
        unflatten(np.zeros(4, np.float32), p)


def test_nesterov_outer_steps_match_numpy():
    lr, mu = 0.7, 0.9
    outer = NesterovOuter(lr=lr, momentum=mu)
    anchor = _model([[1.0, -2.0], [0.5, 0.0]], [3.0], steps=4)
    x, v = flatten(anchor).astype(np.float64), np.zeros(5)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = rng.normal(size=5).astype(np.float32)
        v = mu * v + g
        x = x - lr * (g + mu * v)
        anchor = outer.step(anchor, g)
        np.testing.assert_allclose(flatten(anchor), x, rtol=1e-5, atol=1e-6)
        assert int(anchor["steps"]) == 4, "integer arrays keep the anchor's value"
    restored = NesterovOuter(lr=lr, momentum=mu)
    restored.load_state(outer.state())
    np.testing.assert_array_equal(restored.velocity, outer.velocity)


def test_plain_averaging_is_the_special_case_lr_1_momentum_0():
    anchor = _model([0.0, 0.0], [0.0])
    peers = [_model([1.0, 3.0], [2.0]), _model([3.0, 5.0], [0.0])]
    mean_g = np.mean([pseudo_gradient(anchor, p) for p in peers], axis=0)
    new = NesterovOuter(lr=1.0, momentum=0.0).step(anchor, mean_g)
    np.testing.assert_allclose(flatten(new), [2.0, 4.0, 1.0])


def test_bad_settings_and_gradients_are_refused():
    with pytest.raises(ConfigError):
        NesterovOuter(lr=0)
    with pytest.raises(ConfigError):
        NesterovOuter(momentum=1.0)
    with pytest.raises(NonFiniteError):
        NesterovOuter().step(_model([0.0], [0.0]), np.array([np.inf, 0], np.float32))
    with pytest.raises(SchemaMismatch):
        pseudo_gradient(_model([0.0], [0.0]), _model([0.0, 1.0], [0.0]))


def test_members_with_different_anchors_leave_with_the_mean_anchor_velocity_and_step():
    """[θ, v, g] averaged through the butterfly, then one outer step: numpy oracle, identical members."""
    from potluck.peer.allreduce import butterfly, part_bounds
    from potluck.peer.diloco import mixed_vector, split_mixed

    lr, mu = 0.7, 0.9
    rng = np.random.default_rng(1)
    peers, weights, oracle = {}, {"a": 1.0, "b": 3.0, "c": 2.0}, {}
    for name in weights:
        anchor = _model(rng.normal(size=2), rng.normal(size=1))
        outer = NesterovOuter(lr=lr, momentum=mu)
        outer.step(anchor, rng.normal(size=3).astype(np.float32))  # some velocity of its own
        g = rng.normal(size=3).astype(np.float32)
        peers[name] = (anchor, outer, g)
        oracle[name] = (flatten(anchor), outer.velocity.copy(), g)
    w = np.array([weights[k] for k in sorted(weights)])
    mean = [np.average(np.stack([oracle[k][i] for k in sorted(weights)]), axis=0, weights=w) for i in range(3)]
    v = mu * mean[1] + mean[2]
    expected = mean[0] - lr * (mean[2] + mu * v)

    vectors = {k: mixed_vector(a, o.velocity, g) for k, (a, o, g) in peers.items()}
    outcomes = butterfly(vectors, weights)
    results = []
    for name, (anchor, outer, _) in peers.items():
        theta, velocity, g = split_mixed(outcomes[name].values, vectors[name], [])
        outer.velocity = velocity
        results.append(outer.step(unflatten(theta, anchor), g))
        np.testing.assert_allclose(flatten(results[-1]), expected, rtol=1e-5, atol=1e-6)
    assert len({r.digest for r in results}) == 1

    lost = part_bounds(9, 3)[0]  # a lost first part: θ keeps own values there, g is zero
    theta, velocity, g = split_mixed(np.zeros(9, np.float32), vectors["a"], [lost])
    np.testing.assert_array_equal(theta, vectors["a"][:3])
    assert not g.any()
