"""WeightedMean and weighted_mean against np.average on random updates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from potluck.core.errors import NonFiniteError, SchemaMismatch, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import WeightedMean, aggregate, weighted_mean

SHAPES = {"conv.weight": ((3, 4, 5), np.float32), "conv.bias": ((7,), np.float32),
          "scale": ((), np.float32), "one": ((1,), np.float32), "bn.count": ((), np.int64)}


def make_updates(rng: np.random.Generator, k: int, shapes=SHAPES) -> list[Params]:
    out = []
    for _ in range(k):
        arrays = {}
        for name, (shape, dtype) in shapes.items():
            if np.dtype(dtype).kind == "f":
                arrays[name] = rng.standard_normal(shape).astype(dtype)
            else:
                arrays[name] = rng.integers(-50, 200, size=shape).astype(dtype)
        out.append(Params.from_arrays(arrays, ParamsKind.DELTA))
    return out


def oracle(updates: list[Params], weights: list[float]) -> dict[str, np.ndarray]:
    """np.average over the stacked updates, in float64; integers rounded back."""
    out = {}
    for name, arr in updates[0].items():
        stacked = np.stack([u[name].astype(np.float64) for u in updates])
        mean = np.average(stacked, axis=0, weights=np.asarray(weights, dtype=np.float64))
        out[name] = np.rint(mean).astype(arr.dtype) if arr.dtype.kind != "f" else mean
    return out


def assert_matches(result: Params, expected: dict[str, np.ndarray], updates: list[Params]) -> None:
    assert result.kind is ParamsKind.DELTA
    assert result.schema == updates[0].schema
    for name, want in expected.items():
        got = result[name]
        if got.dtype.kind != "f":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            scale = max(float(np.abs(np.stack([u[name] for u in updates])).max()), 1e-30)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def same(a: Params, b: Params) -> bool:
    """Bit-for-bit equal arrays, schema and kind (Params == compares digests)."""
    return (a.kind, a.schema) == (b.kind, b.schema) and all(a[n].tobytes() == b[n].tobytes() for n in a)


def fold(updates, weights, **kwargs) -> WeightedMean:
    agg = WeightedMean(**kwargs)
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return agg


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9, 13])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_matches_np_average_with_unequal_weights(k: int, batch: int) -> None:
    rng = np.random.default_rng(1000 * k + batch)
    updates = make_updates(rng, k)
    weights = [int(n) for n in rng.integers(1, 5000, size=k)]
    agg = fold(updates, weights, batch=batch)
    assert agg.count == k
    assert agg.total_weight == float(sum(weights))
    assert_matches(agg.result(), oracle(updates, weights), updates)


def test_single_node_gives_its_update_back() -> None:
    (update,) = make_updates(np.random.default_rng(0), 1)
    result = weighted_mean([update], [37])
    for name, arr in update.items():
        np.testing.assert_allclose(result[name], arr, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_arrays_span_several_blocks(dtype) -> None:
    rng = np.random.default_rng(7)
    shapes = {"big": ((200_000,), dtype), "mat": ((300, 700), dtype), "tail": ((65_537,), dtype)}
    updates = make_updates(rng, 6, shapes)
    weights = [3.5, 100.0, 1.0, 7.0, 12.25, 50.0]
    result = fold(updates, weights, batch=4).result()
    assert all(result[n].dtype == np.dtype(dtype) for n in shapes)
    assert_matches(result, oracle(updates, weights), updates)


def test_small_float_and_unsigned_dtypes_keep_their_dtype() -> None:
    rng = np.random.default_rng(3)
    shapes = {"h": ((50,), np.float16), "u": ((4,), np.uint8), "i": ((2, 2), np.int32)}
    updates = []
    for _ in range(5):
        updates.append(Params.from_arrays({
            "h": rng.standard_normal(50).astype(np.float16),
            "u": rng.integers(0, 255, 4).astype(np.uint8),
            "i": rng.integers(-9, 9, (2, 2)).astype(np.int32),
        }, ParamsKind.DELTA))
    weights = [1, 2, 3, 4, 5]
    result = weighted_mean(updates, weights)
    assert result.schema == updates[0].schema
    want = oracle(updates, weights)
    np.testing.assert_allclose(result["h"].astype(np.float64), want["h"], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(result["u"], want["u"])
    np.testing.assert_array_equal(result["i"], want["i"])
    assert set(shapes) == set(result)


def test_result_twice_is_the_same_and_add_continues_after_result() -> None:
    rng = np.random.default_rng(11)
    updates = make_updates(rng, 10)
    weights = [float(w) for w in rng.integers(1, 100, 10)]
    agg = fold(updates[:5], weights[:5])
    first = agg.result()
    assert same(agg.result(), first)
    assert_matches(first, oracle(updates[:5], weights[:5]), updates[:5])
    for u, w in zip(updates[5:], weights[5:], strict=True):
        agg.add(u, w)
    assert agg.count == 10
    assert_matches(agg.result(), oracle(updates, weights), updates)


def test_result_is_deterministic_across_aggregators() -> None:
    rng = np.random.default_rng(5)
    updates = make_updates(rng, 7)
    weights = [1, 2, 3, 4, 5, 6, 7]
    assert same(fold(updates, weights).result(), fold(updates, weights).result())


def test_nothing_added_raises() -> None:
    with pytest.raises(StrategyError, match="no updates to aggregate"):
        WeightedMean().result()
    with pytest.raises(StrategyError, match="no updates"):
        weighted_mean([], [])


def test_length_mismatch_raises() -> None:
    updates = make_updates(np.random.default_rng(0), 2)
    with pytest.raises(StrategyError, match="2 updates but 1 weights"):
        weighted_mean(updates, [1.0])


@pytest.mark.parametrize("weight", [0, -1, -0.5, float("nan"), float("inf"), True, "3", None])
def test_bad_weight_is_rejected(weight) -> None:
    (update,) = make_updates(np.random.default_rng(0), 1)
    with pytest.raises(StrategyError, match="weight"):
        WeightedMean().add(update, weight)


def test_numpy_scalar_weights_are_accepted() -> None:
    updates = make_updates(np.random.default_rng(2), 3)
    weights = [np.int64(3), np.float32(2.5), np.float64(1.0)]
    assert_matches(weighted_mean(updates, weights), oracle(updates, [3, 2.5, 1.0]), updates)


def _corrupt(update: Params, name: str, value: float) -> Params:
    arrays = dict(update)
    arr = arrays[name].copy()
    arr.reshape(-1)[-1] = value
    arrays[name] = arr
    return Params.from_arrays(arrays, ParamsKind.DELTA)


def _bad_updates(good: Params) -> list[tuple[str, Params, type[Exception]]]:
    arrays = dict(good)
    reshaped = {**arrays, "conv.bias": np.zeros((1, 7), np.float32)}
    renamed = {("conv.b" if k == "conv.bias" else k): v for k, v in arrays.items()}
    missing = {k: v for k, v in arrays.items() if k != "scale"}
    extra = {**arrays, "extra": np.zeros(2, np.float32)}
    retyped = {**arrays, "conv.bias": arrays["conv.bias"].astype(np.float64)}
    reordered = dict(reversed(list(arrays.items())))
    return [
        ("nan", _corrupt(good, "conv.weight", float("nan")), NonFiniteError),
        ("inf", _corrupt(good, "conv.bias", float("inf")), NonFiniteError),
        ("-inf", _corrupt(good, "scale", float("-inf")), NonFiniteError),
        ("shape", Params.from_arrays(reshaped, ParamsKind.DELTA), SchemaMismatch),
        ("name", Params.from_arrays(renamed, ParamsKind.DELTA), SchemaMismatch),
        ("missing", Params.from_arrays(missing, ParamsKind.DELTA), SchemaMismatch),
        ("extra", Params.from_arrays(extra, ParamsKind.DELTA), SchemaMismatch),
        ("dtype", Params.from_arrays(retyped, ParamsKind.DELTA), SchemaMismatch),
        ("order", Params.from_arrays(reordered, ParamsKind.DELTA), SchemaMismatch),
    ]


@pytest.mark.parametrize("pending", [0, 1, 3])
def test_rejected_update_leaves_aggregate_unchanged(pending: int) -> None:
    rng = np.random.default_rng(42)
    updates = make_updates(rng, 4 + pending)  # 4 fold at once (batch 4), the rest stay pending
    weights = [float(w) for w in rng.integers(1, 30, len(updates))]
    agg = fold(updates, weights, batch=4)
    before = agg.result()
    more = make_updates(rng, 1)[0]
    for label, bad, error in _bad_updates(more):
        with pytest.raises(error):
            agg.add(bad, 10.0)
        assert (agg.count, agg.total_weight) == (len(updates), sum(weights)), label
        assert same(agg.result(), before), label
    for weight in (0, -3, float("nan")):
        with pytest.raises(StrategyError):
            agg.add(more, weight)
        assert same(agg.result(), before)
    agg.add(more, 2.0)  # still usable
    assert_matches(agg.result(), oracle([*updates, more], [*weights, 2.0]), updates)


def test_first_update_is_checked_against_a_given_schema() -> None:
    good = make_updates(np.random.default_rng(0), 1)[0]
    for label, bad, error in _bad_updates(good):
        agg = WeightedMean(schema=good.schema)
        with pytest.raises(error):
            agg.add(bad, 1.0)
        assert agg.count == 0, label
        with pytest.raises(StrategyError):
            agg.result()


def test_error_names_the_array() -> None:
    good = make_updates(np.random.default_rng(0), 1)[0]
    with pytest.raises(NonFiniteError, match="conv.weight"):
        WeightedMean().add(_corrupt(good, "conv.weight", float("nan")), 1)


def test_check_finite_false_skips_the_check() -> None:
    good = make_updates(np.random.default_rng(0), 1)[0]
    agg = WeightedMean(check_finite=False)
    agg.add(_corrupt(good, "conv.bias", float("nan")), 1.0)
    assert np.isnan(agg.result()["conv.bias"][-1])


def test_huge_finite_values_are_not_mistaken_for_inf() -> None:
    # Their float32 sum overflows; the exact check must then accept them.
    big = Params.from_arrays({"w": np.full(8, 3e38, np.float32)}, ParamsKind.DELTA)
    agg = WeightedMean()
    agg.add(big, 1.0)
    np.testing.assert_allclose(agg.result()["w"], 3e38, rtol=1e-6)


def test_inputs_are_not_mutated() -> None:
    rng = np.random.default_rng(9)
    updates = make_updates(rng, 6)
    copies = [{n: a.copy() for n, a in u.items()} for u in updates]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    weights_copy = list(weights)
    result = weighted_mean(updates, weights)
    assert weights == weights_copy
    for u, c in zip(updates, copies, strict=True):
        for name in c:
            np.testing.assert_array_equal(u[name], c[name])
    assert all(not result[n].flags.writeable for n in result)
    # the result does not alias any input
    assert not any(np.shares_memory(result[n], u[n]) for u in updates for n in u)


def test_batch_must_be_positive_int() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(StrategyError, match="batch"):
            WeightedMean(batch=bad)  # type: ignore[arg-type]
        with pytest.raises(StrategyError, match="threads"):
            WeightedMean(threads=bad)  # type: ignore[arg-type]


def test_folding_makes_no_model_sized_temporaries() -> None:
    n = 4_000_000  # 16 MB per update
    rng = np.random.default_rng(0)
    base = rng.standard_normal(n).astype(np.float32)
    updates = [Params.from_arrays({"w": base * (i + 1)}, ParamsKind.DELTA) for i in range(9)]
    agg = WeightedMean(batch=4)
    for u in updates[:4]:
        agg.add(u, 1.0)  # the first fold allocates the accumulator
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for u in updates[4:]:
            agg.add(u, 2.0)  # checks and one more fold
        agg._fold()  # fold the pending one too
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 4 // 4, f"peak extra memory {peak} bytes for a {n * 4}-byte model"


@pytest.fixture
def small_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split folds and checks across threads from 1,000 values on, to test it cheaply."""
    monkeypatch.setattr(aggregate, "_MIN_PARALLEL", 1000)
    monkeypatch.setattr(aggregate, "_BLOCK_BYTES", 1024)


@pytest.mark.usefixtures("small_parallel")
def test_result_does_not_depend_on_thread_count() -> None:
    rng = np.random.default_rng(21)
    shapes = {"a": ((1_700,), np.float32), "b": ((3, 333), np.float32), "c": ((), np.float32),
              "d": ((2_049,), np.float64), "n": ((5,), np.int64)}
    updates = make_updates(rng, 7, shapes)
    weights = [float(w) for w in rng.integers(1, 99, 7)]
    results = [fold(updates, weights, threads=t).result() for t in (1, 2, 3, 4, 7)]
    assert all(same(results[0], r) for r in results[1:])
    assert_matches(results[0], oracle(updates, weights), updates)


@pytest.mark.usefixtures("small_parallel")
@pytest.mark.parametrize("where", [0, 1_000, 1_699])
def test_parallel_check_finds_nan_anywhere(where: int) -> None:
    rng = np.random.default_rng(22)
    (good,) = make_updates(rng, 1, {"a": ((1_700,), np.float32), "b": ((10,), np.float32)})
    a = good["a"].copy()
    a[where] = np.nan
    bad = Params.from_arrays({"a": a, "b": good["b"]}, ParamsKind.DELTA)
    with pytest.raises(NonFiniteError, match="'a' holds 1 NaN/Inf"):
        WeightedMean(threads=3).add(bad, 1.0)


def test_split_covers_every_value_once() -> None:
    sizes = [5, 0, 3_000_000, 7, 1_048_576, 1]
    for parts in (1, 2, 3, 4, 8):
        pieces = aggregate._split(sizes, parts)
        assert len(pieces) <= parts
        covered = [0] * len(sizes)
        for segments in pieces:
            for index, start, stop in segments:
                assert 0 <= start < stop <= sizes[index]
                covered[index] += stop - start
        assert covered == sizes
