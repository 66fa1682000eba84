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
