"""DiLoCo's outer step (Douillard et al. 2023): pseudo-gradients and Nesterov momentum.

Every peer holds the *anchor* θ (the model after the last outer step), trains H inner
steps from it to θᵢ, and the group averages the pseudo-gradients gᵢ = θ − θᵢ. The outer
optimizer is SGD with Nesterov momentum, as ``torch.optim.SGD(nesterov=True)``::

    v ← μ·v + ḡ
    θ ← θ − η·(ḡ + μ·v)

with η = 0.7 and μ = 0.9 by default (the paper's values). ``v`` starts at zero. With
μ = 0 and η = 1 the step is plain averaging of the peers' models (FedAvg).

**Groups of differing anchors.** With groups smaller than the swarm, members may come
with different anchors (they averaged in different groups last step). Then the group
averages [θ, v, g] instead of g alone (:func:`mixed_vector`), so every member leaves
with the group's mean anchor and velocity and applies the mean pseudo-gradient to it:
the anchors mix across groups from step to step (as in Moshpit SGD) and a group's
members leave identical. Equal anchors (one group, or a group that averaged together
last step) cost only g.

Only floating arrays take part; integer arrays (counters) keep the anchor's value, so
every peer of a group ends with the same model. The vectors are float32 in model order
(:func:`flatten`), the layout the all-reduce splits into parts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from potluck.core.errors import ConfigError, NonFiniteError, SchemaMismatch
from potluck.core.params import Params


def float_names(params: Params) -> list[str]:
    return [name for name in params if params[name].dtype.kind == "f"]


def flatten(params: Params) -> np.ndarray:
    """The floating arrays of ``params``, in order, as one float32 vector."""
    names = float_names(params)
    if not names:
        return np.zeros(0, np.float32)
    return np.concatenate([params[n].astype(np.float32, copy=False).ravel() for n in names])


def unflatten(vector: np.ndarray, like: Params) -> Params:
    """``like`` with its floating arrays replaced by the values of ``vector`` (inverse of flatten)."""
    names = float_names(like)
    total = sum(like[n].size for n in names)
    if vector.shape != (total,):
        raise SchemaMismatch(f"a vector of shape {vector.shape} does not fit a model of {total} floating values")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name in like:
        arr = like[name]
        if name in names:
            arrays[name] = vector[offset:offset + arr.size].reshape(arr.shape).astype(arr.dtype)
            offset += arr.size
        else:
            arrays[name] = arr
    return Params.from_arrays(arrays, like.kind)


def pseudo_gradient(anchor: Params, trained: Params) -> np.ndarray:
    """g = θ − θᵢ as a flat float32 vector; SchemaMismatch if the models differ in layout."""
    trained.check_schema(anchor.schema, what="the trained model")
    gradient: np.ndarray = flatten(anchor) - flatten(trained)
    return gradient


def mixed_vector(anchor: Params, velocity: np.ndarray | None, gradient: np.ndarray) -> np.ndarray:
    """[θ, v, g] as one float32 vector (v = 0 before the first outer step)."""
    x = flatten(anchor)
    v = np.zeros_like(x) if velocity is None else velocity.astype(np.float32)
    return np.concatenate([x, v, gradient.astype(np.float32)])


def split_mixed(values: np.ndarray, own: np.ndarray,
                missing: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(θ̄, v̄, ḡ) from an averaged :func:`mixed_vector`. In ``missing`` slices (parts
    nobody received, zero in ``values``) θ and v keep this member's own values from
    ``own``, since a zero would wipe the model; g stays zero there."""
    out, n = np.array(values, np.float32), values.shape[0] // 3
    for start, stop in missing:
        end = min(stop, 2 * n)
        if start < end:
            out[start:end] = own[start:end]
    return out[:n], out[n:2 * n], out[2 * n:]


class NesterovOuter:
    """The outer optimizer; ``state()``/``load_state()`` keep ``v`` across restarts."""

    def __init__(self, *, lr: float = 0.7, momentum: float = 0.9) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"outer lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"outer momentum must be in [0, 1), got {momentum}")
        self.lr, self.momentum = lr, momentum
        self.velocity: np.ndarray | None = None

    def step(self, anchor: Params, mean_gradient: np.ndarray) -> Params:
        """The new anchor; advances ``v``. NonFiniteError if ``mean_gradient`` holds NaN/Inf."""
        if not np.isfinite(mean_gradient).all():
            raise NonFiniteError("the averaged pseudo-gradient holds NaN or Inf")
        x = flatten(anchor)
        if mean_gradient.shape != x.shape:
            raise SchemaMismatch(f"pseudo-gradient of shape {mean_gradient.shape} for a model of {x.shape[0]} values")
        g = mean_gradient.astype(np.float32)
        v = np.zeros_like(x) if self.velocity is None else self.velocity
        v = self.momentum * v + g
        self.velocity = v
        return unflatten(x - self.lr * (g + self.momentum * v), anchor)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.velocity is None else {"velocity": self.velocity}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else np.array(velocity, np.float32)
