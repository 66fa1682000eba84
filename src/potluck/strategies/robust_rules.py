"""Byzantine-robust aggregation rules: pure functions of one round's updates.

Each rule takes every update of a round at once (a sequence of DELTA :class:`Params`
with one schema) and returns a new DELTA; inputs are never modified. Unlike
:class:`~potluck.strategies.aggregate.WeightedMean` they cannot stream: the caller
holds all ``n`` updates, O(nodes × model) memory, and each rule adds temporaries of
``n`` × (largest array) float64 values. Only :func:`clip_to_norm` works on one update.

================  ===============================================  ======================
rule              result, per array (``n`` updates)                weights
================  ===============================================  ======================
coordinate_median the median of each coordinate (mean of the two   ignored
                  middle values when ``n`` is even)
trimmed_mean      per coordinate: sort, drop ``k = ⌊β·n⌋`` values   ignored
                  at each end, average the ``n − 2k`` left
krum_select       the ``m`` updates with the lowest Krum scores    (used by the caller)
clip_to_norm      ``d · min(1, C / ‖d‖₂)``                          —
================  ===============================================  ======================

Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent"): with ``f`` assumed Byzantine updates, the score of update ``i`` is
the sum of its squared L2 distances to its ``n − f − 2`` nearest other updates; the
rule needs ``n > 2f + 2``. Ties are broken by position (the earlier update wins).

Norms and distances are taken over floating-point arrays only, in float64: integer
arrays (counters such as BatchNorm's ``num_batches_tracked``) count batches, not a
direction in parameter space, and would otherwise dominate. Integer arrays of a
median or trimmed mean are rounded to the nearest integer (ties to even); float
results are computed in float64 and returned in each array's own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from potluck.core.errors import StrategyError
from potluck.core.params import Params, ParamsKind


def _check(updates: Sequence[Params], rule: str, at_least: int = 1) -> None:
    if len(updates) < at_least:
        raise StrategyError(f"{rule}: needs at least {at_least} update(s), got {len(updates)}")
    schema = updates[0].schema
    for i, update in enumerate(updates[1:], start=1):
        update.check_schema(schema, what=f"{rule}: update {i}")


def _stack(updates: Sequence[Params], name: str) -> np.ndarray:
    """The ``name`` arrays of every update as one (n, size) float64 array."""
    return np.stack([u[name].reshape(-1) for u in updates]).astype(np.float64, copy=False)


def _cast(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """float64 ``values`` back in the shape and dtype of ``like`` (integers rounded)."""
    if like.dtype.kind != "f":
        values = np.rint(values)
    return values.reshape(like.shape).astype(like.dtype, copy=False)


def coordinate_median(updates: Sequence[Params]) -> Params:
    """The coordinate-wise median of ``updates`` (``np.median`` along the updates).

    Unweighted by definition. Raises ``StrategyError`` for no updates and
    ``SchemaMismatch`` when schemas differ.

    >>> ups = [Params.from_arrays({"w": [v]}, ParamsKind.DELTA) for v in (1.0, 9.0, 2.0)]
    >>> coordinate_median(ups)["w"].tolist()
    [2.0]
    """
    _check(updates, "median")
    out = {name: _cast(np.median(_stack(updates, name), axis=0), arr) for name, arr in updates[0].items()}
    return Params.from_arrays(out, ParamsKind.DELTA, copy=False)


def trim_count(n: int, trim: float) -> int:
    """Values dropped at each end of ``n`` by a trimmed mean with fraction ``trim``: ⌊trim·n⌋.

    A tiny tolerance keeps fractions that are exact in decimal exact (0.3 × 10 → 3).
    """
    return math.floor(trim * n + 1e-9)


def trimmed_mean(updates: Sequence[Params], trim: float) -> Params:
    """The coordinate-wise β-trimmed mean: per coordinate, sort the ``n`` values, drop
    ``k = ⌊β·n⌋`` at each end (:func:`trim_count`) and average the rest.

    Unweighted. ``trim`` (β) must be in [0, 0.5), so at least one value is always left;
    β = 0 is the plain (unweighted) mean. Raises ``StrategyError`` for no updates or a
    bad ``trim``, ``SchemaMismatch`` when schemas differ.

    >>> ups = [Params.from_arrays({"w": [v]}, ParamsKind.DELTA) for v in (1.0, 100.0, 2.0, 3.0)]
    >>> trimmed_mean(ups, 0.25)["w"].tolist()
    [2.5]
    """
    if not 0 <= trim < 0.5:
        raise StrategyError(f"trimmed mean: trim must be in [0, 0.5), got {trim!r}")
    _check(updates, "trimmed mean")
    k = trim_count(len(updates), trim)
    out = {}
    for name, arr in updates[0].items():
        values = np.sort(_stack(updates, name), axis=0)
        out[name] = _cast(values[k : len(updates) - k].mean(axis=0), arr)
    return Params.from_arrays(out, ParamsKind.DELTA, copy=False)


def squared_distances(updates: Sequence[Params]) -> np.ndarray:
    """The (n, n) matrix of squared L2 distances between updates, over float arrays.

    Computed from differences (not from a Gram matrix), so near-identical updates do
    not lose their distance to cancellation. Time O(n² × model).
    """
    _check(updates, "distances")
    n = len(updates)
    dist = np.zeros((n, n), np.float64)
    for name, arr in updates[0].items():
        if arr.dtype.kind != "f":
            continue
        x = _stack(updates, name)
        for i in range(n - 1):
            diff = x[i + 1 :] - x[i]
            d = np.einsum("ij,ij->i", diff, diff)
            dist[i, i + 1 :] += d
            dist[i + 1 :, i] += d
    return dist


def krum_scores(updates: Sequence[Params], byzantine: int) -> np.ndarray:
    """Krum score of each update: Σ of squared distances to its ``n − f − 2`` nearest others.

    Raises ``StrategyError`` unless ``n > 2f + 2`` (Blanchard et al.'s condition).
    """
    n, f = len(updates), byzantine
    if f < 0:
        raise StrategyError(f"krum: the number of Byzantine updates must be >= 0, got {f}")
    if n <= 2 * f + 2:
        raise StrategyError(
            f"krum: with f = {f} Byzantine updates it needs more than 2f + 2 = {2 * f + 2} updates, got {n}"
        )
    dist = squared_distances(updates)
    nearest = n - f - 2
    scores = np.empty(n, np.float64)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:nearest].sum()
    return scores


def krum_select(updates: Sequence[Params], byzantine: int, select: int = 1) -> list[int]:
    """Positions of the ``select`` updates with the lowest Krum scores, in their original order.

    ``select = 1`` is Krum; more is Multi-Krum (scores are computed once, over all
    ``n`` updates). Raises ``StrategyError`` unless ``n > 2f + 2`` and
    ``1 ≤ select ≤ n``.

    >>> ups = [Params.from_arrays({"w": [v]}, ParamsKind.DELTA) for v in (0.0, 1.0, 2.0, 10.0)]
    >>> krum_select(ups, byzantine=0), krum_select(ups, byzantine=0, select=3)
    ([1], [0, 1, 2])
    """
    if not 1 <= select <= len(updates):
        raise StrategyError(f"multi-krum: cannot select {select} of {len(updates)} updates")
    scores = krum_scores(updates, byzantine)
    chosen = np.argsort(scores, kind="stable")[:select]
    return sorted(int(i) for i in chosen)


def l2_norm(update: Params) -> float:
    """‖update‖₂ over its floating-point arrays, computed in float64."""
    total = 0.0
    for arr in update.values():
        if arr.dtype.kind == "f":
            flat = arr.reshape(-1).astype(np.float64, copy=False)
            total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_to_norm(update: Params, max_norm: float) -> Params:
    """``update`` scaled by ``min(1, max_norm / ‖update‖₂)``; float arrays only.

    Returns ``update`` itself when it is within the bound (a zero update always is, so
    there is no division by zero). Integer arrays are never scaled.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise StrategyError(f"norm bound: max_norm must be finite and > 0, got {max_norm!r}")
    norm = l2_norm(update)
    if norm <= max_norm:
        return update
    scale = max_norm / norm
    out = {}
    for name, arr in update.items():
        if arr.dtype.kind == "f":
            out[name] = (arr.astype(np.float64) * scale).astype(arr.dtype)
        else:
            out[name] = arr
    return Params.from_arrays(out, update.kind, copy=False)
