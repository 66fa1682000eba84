"""WeightedMean with the NaN/Inf check fused into the fold (``check_finite="fold"``):
the same numbers as check-then-fold, a bad update dropped exactly wherever its NaN is."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from potluck.core.errors import NonFiniteError, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import WeightedMean, aggregate

SHAPES = {"a": ((1_700,), np.float32), "b": ((3, 333), np.float32), "c": ((), np.float32),
          "d": ((2_049,), np.float64), "h": ((40,), np.float16), "n": ((5,), np.int64)}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many blocks and threads on small arrays: a NaN lands mid-model, after blocks folded."""
    monkeypatch.setattr(aggregate, "_MIN_PARALLEL", 1000)
    monkeypatch.setattr(aggregate, "_BLOCK_BYTES", 1024)


def updates_of(rng: np.random.Generator, k: int) -> list[Params]:
    out = []
    for _ in range(k):
        arrays = {name: (rng.standard_normal(shape) * 3).astype(dt) if np.dtype(dt).kind == "f"
                  else rng.integers(-50, 200, size=shape).astype(dt) for name, (shape, dt) in SHAPES.items()}
        out.append(Params.from_arrays(arrays, ParamsKind.DELTA))
    return out


def corrupt(update: Params, name: str, where: int, value: float) -> Params:
    arrays = {n: update[n].copy() for n in update}
    arrays[name].reshape(-1)[where] = value
    return Params.from_arrays(arrays, ParamsKind.DELTA)


def mean_of(updates, weights, **kwargs) -> tuple[WeightedMean, Params]:
    agg = WeightedMean(**kwargs)
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return agg, agg.result()


def same(a: Params, b: Params) -> bool:
    return a.schema == b.schema and all(a[n].tobytes() == b[n].tobytes() for n in a)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("threads", [1, 3])
def test_fused_check_gives_the_checked_fold_bit_for_bit(batch: int, threads: int) -> None:
    rng = np.random.default_rng(batch * 10 + threads)
    updates = updates_of(rng, 9)
    weights = [float(w) for w in rng.integers(1, 99, 9)]
    checked = mean_of(updates, weights, batch=batch, threads=threads)[1]
    agg, fused = mean_of(updates, weights, batch=batch, threads=threads, check_finite="fold")
    assert same(checked, fused) and checked.digest == fused.digest
    assert agg.refused == [] and agg.count == 9 and agg.total_weight == sum(weights)


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
@pytest.mark.parametrize(("name", "where", "value"), [
    ("a", 850, np.nan), ("a", 1_699, np.inf), ("b", 0, -np.inf), ("d", 1_024, np.nan), ("h", 39, np.inf)])
def test_good_then_bad_midway_then_good_is_the_mean_of_the_two_good(batch, name, where, value) -> None:
    rng = np.random.default_rng(5)
    good1, bad, good2 = updates_of(rng, 3)
    bad = corrupt(bad, name, where, value)
    agg, got = mean_of([good1, bad, good2], [3.0, 5.0, 7.0], batch=batch, threads=3, check_finite="fold")
    assert [p for p, _ in agg.refused] == [1]
    assert isinstance(agg.refused[0][1], NonFiniteError) and f"'{name}' holds 1 NaN/Inf" in str(agg.refused[0][1])
    assert agg.count == 2 and agg.total_weight == 10.0
    # Exactly as if the bad update had never been added, and numpy's mean of the two good ones.
    assert same(got, mean_of([good1, good2], [3.0, 7.0], batch=batch, threads=3)[1])
    for n in ("a", "b", "d"):
        want = np.average(np.stack([good1[n], good2[n]]).astype(np.float64), axis=0, weights=[3.0, 7.0])
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-6)


def test_refusals_keep_their_positions_and_an_all_bad_round_has_no_mean() -> None:
    rng = np.random.default_rng(6)
    ups = updates_of(rng, 5)
    bads = [corrupt(u, "a", 3, np.nan) for u in ups[:2]]
    agg = WeightedMean(batch=2, check_finite="fold", threads=2)
    for u in bads:
        agg.add(u, 1.0)
    with pytest.raises(StrategyError, match="no updates to aggregate"):
        agg.result()
    assert [p for p, _ in agg.refused] == [0, 1] and agg.count == 0 and agg.total_weight == 0.0
    for u in ups[2:]:
        agg.add(u, 2.0)
    agg.add(corrupt(ups[0], "b", 998, np.inf), 4.0)  # position 5, folded by result()
    assert same(agg.result(), mean_of(ups[2:], [2.0] * 3, batch=2)[1])
    assert [p for p, _ in agg.refused] == [0, 1, 5] and agg.count == 3


def test_huge_finite_values_are_not_refused() -> None:
    big = np.full(1_700, 3e38, np.float32)  # the weighted block sums overflow; no value is Inf
    ups = [Params.from_arrays({"a": big}, ParamsKind.DELTA), Params.from_arrays({"a": -big}, ParamsKind.DELTA)]
    agg, _ = mean_of(ups, [1.0, 1.0], batch=2, check_finite="fold", threads=2)
    assert agg.refused == [] and agg.count == 2


def test_check_finite_takes_three_values() -> None:
    with pytest.raises(StrategyError, match="check_finite must be True, False or 'fold'"):
        WeightedMean(check_finite="later")  # type: ignore[arg-type]


@pytest.mark.parametrize("nan_at", [None, 4])
def test_fused_fold_uses_two_model_buffers(monkeypatch: pytest.MonkeyPatch, nan_at: int | None) -> None:
    monkeypatch.setattr(aggregate, "_BLOCK_BYTES", 1 << 16)
    n = 1 << 20
    rng = np.random.default_rng(7)
    ups = [Params.from_arrays({"w": rng.standard_normal(n, dtype=np.float32)}, ParamsKind.DELTA) for _ in range(9)]
    if nan_at is not None:
        ups[nan_at] = corrupt(ups[nan_at], "w", n // 2, np.nan)
    tracemalloc.start()
    try:
        agg, out = mean_of(ups, [1.0] * 9, batch=2, check_finite="fold", threads=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [p for p, _ in agg.refused] == ([] if nan_at is None else [nan_at])
    # Two accumulators, the second handed out as the mean, plus block buffers and, to name
    # a refusal's bad values, a boolean mask (a quarter of a float32 model).
    allowed = 2.5 * n * 4
    assert peak < allowed, f"peak extra memory {peak} bytes for a {n * 4}-byte model"
