"""The streaming weighted mean: Δ = Σ nᵢ·dᵢ / Σ nᵢ, folded in one update at a time.

Every averaging strategy (FedAvg, FedProx, FedAvgM, the FedOpt family) aggregates with
:class:`WeightedMean`; they differ only in what they do with the mean afterwards.

Cost, for a model of ``M`` values and ``K`` updates:

* memory: one accumulator of ``M`` values plus two small block buffers per thread; the
  aggregator also keeps up to ``batch`` pending updates alive (references, never copies);
  :meth:`WeightedMean.result` allocates the ``M`` values it returns;
* time: each update is read once to check it is finite (skip with ``check_finite=False``
  when the caller already checked at decode time) and once to fold it in; the
  accumulator is read and written once per ``batch`` updates. Folding works in blocks
  that stay in the CPU cache, so no temporary is ever as large as the model, and large
  folds and checks are shared by a few threads (numpy releases the GIL). Each value is
  computed in the same order whatever the split, so results are bit-for-bit the same
  for any thread count.

Precision: float32 arrays are summed in float32, float64 in float64, smaller floats in
float32, and integer or boolean arrays (e.g. BatchNorm's ``num_batches_tracked``) in
float64, their mean rounded to the nearest integer (ties to even).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from potluck.core.errors import StrategyError
from potluck.core.params import Params, ParamsKind, SchemaEntry

# Bytes of one block buffer: two of them plus a block of the accumulator fit in L2.
_BLOCK_BYTES = 1 << 18
# Folds and checks of fewer values than this run in the calling thread only.
_MIN_PARALLEL = 1 << 20

# A piece of work: (array index, start, stop) over flat arrays.
Segment = tuple[int, int, int]


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype an array of ``dtype`` is summed in (see the module docstring)."""
    if dtype.kind == "f":
        return np.dtype(np.promote_types(dtype, np.float32))
    return np.dtype(np.float64)


def default_threads() -> int:
    """Threads a large fold uses by default: the CPUs this process may run on, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _split(sizes: Sequence[int], parts: int) -> list[list[Segment]]:
    """Cut arrays of ``sizes`` (taken end to end) into ``parts`` runs of near-equal length."""
    total = sum(sizes)
    if parts <= 1 or total < _MIN_PARALLEL:
        return [[(i, 0, n) for i, n in enumerate(sizes) if n]]
    quota = -(-total // parts)
    out: list[list[Segment]] = [[]]
    room = quota
    for index, size in enumerate(sizes):
        start = 0
        while start < size:
            if room == 0:
                out.append([])
                room = quota
            stop = min(size, start + room)
            out[-1].append((index, start, stop))
            room -= stop - start
            start = stop
    return out


def _run(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs`` concurrently (numpy releases the GIL), the first in this thread."""
    if len(jobs) == 1:
        jobs[0]()
        return
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,), daemon=True) for job in jobs[1:]]
    for thread in threads:
        thread.start()
    guarded(jobs[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _all_finite(update: Params, threads: int) -> bool:
    """True iff no float array of ``update`` holds NaN or Inf.

    One read of each value, with no model-sized temporary: a sum is finite whenever
    every term is (NaN and Inf always propagate), so only a non-finite sum, which may
    also come from an overflow, needs the exact element-wise check.
    """
    arrays = [a.reshape(-1) for a in update.values() if a.dtype.kind == "f"]
    suspects: set[int] = set()

    def check(segments: list[Segment]) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            for index, start, stop in segments:
                if not math.isfinite(float(np.add.reduce(arrays[index][start:stop]))):
                    suspects.add(index)

    _run([partial(check, segs) for segs in _split([a.size for a in arrays], threads)])
    return not any(not np.isfinite(arrays[i]).all() for i in sorted(suspects))


class WeightedMean:
    """Streaming weighted mean of delta updates; implements ``Aggregator``.

    ``add(update, n)`` validates the update and queues a reference to it; every
    ``batch`` updates (and on :meth:`result`) the queue is folded into the accumulator.
    ``result()`` may be called any number of times, and ``add`` may go on afterwards.
    Not thread-safe: one caller at a time (it uses threads of its own for large folds).

    >>> agg = WeightedMean()
    >>> agg.add(Params.from_arrays({"w": [1.0, 2.0]}, ParamsKind.DELTA), 1)
    >>> agg.add(Params.from_arrays({"w": [4.0, 5.0]}, ParamsKind.DELTA), 2)
    >>> agg.result()["w"].tolist(), agg.count, agg.total_weight
    ([3.0, 4.0], 2, 3.0)

    Args:
        schema: names, shapes and dtypes every update must have (``Params.schema`` of
            the global model); when ``None`` the first update fixes it.
        batch: updates folded together in one pass over the accumulator. Larger means
            fewer passes but more updates held alive; ``1`` folds each update at once.
        check_finite: reject updates holding NaN/Inf (one extra read per update).
        threads: threads that share a large fold or check (≥ 2**20 values); the
            result does not depend on it. Default :func:`default_threads`.
    """

    __slots__ = (
        "_schema", "_batch", "_check_finite", "_pending", "_acc", "_fresh",
        "_threads", "_count", "_total",
    )

    def __init__(
        self,
        *,
        schema: tuple[SchemaEntry, ...] | None = None,
        batch: int = 4,
        check_finite: bool = True,
        threads: int | None = None,
    ) -> None:
        for label, value in (("batch", batch), ("threads", 1 if threads is None else threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StrategyError(f"{label} must be a positive integer, got {value!r}")
        self._threads = default_threads() if threads is None else threads
        self._schema = tuple(schema) if schema is not None else None
        self._batch = batch
        self._check_finite = check_finite
        self._pending: list[tuple[Params, float]] = []
        self._acc: list[np.ndarray] | None = None  # flat, one per array, in _acc_dtype
        self._fresh = True  # accumulators hold nothing yet: the first fold assigns
        self._count = 0
        self._total = 0.0

    @property
    def count(self) -> int:
        """Number of updates accepted so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights accepted so far (the denominator of the mean)."""
        return self._total

    @property
    def schema(self) -> tuple[SchemaEntry, ...] | None:
        """The schema updates must have, or ``None`` before the first update."""
        return self._schema

    def add(self, update: Params, weight: float) -> None:
        """Fold in ``update`` with ``weight`` (its number of examples, > 0).

        Raises, leaving the aggregate unchanged:
            StrategyError: ``weight`` is not a finite number > 0, or ``update`` is not Params.
            SchemaMismatch: names, shapes or dtypes differ from the first update's.
            NonFiniteError: a float array holds NaN or Inf (when ``check_finite``).
        """
        if not isinstance(update, Params):
            raise StrategyError(f"update must be Params, got {type(update).__name__}")
        w = _check_weight(weight)
        if self._schema is not None:
            update.check_schema(self._schema, what="update")
        if self._check_finite and not _all_finite(update, self._threads):
            update.check_finite(what="update")  # raises NonFiniteError naming the array
        if self._schema is None:
            self._schema = update.schema
        self._pending.append((update, w))
        self._count += 1
        self._total += w
        if len(self._pending) >= self._batch:
            self._fold()

    def result(self) -> Params:
        """The weighted mean so far as a DELTA, with the updates' names, shapes and dtypes.

        Raises ``StrategyError`` when no update was added.
        """
        if self._count == 0 or self._schema is None:
            raise StrategyError("no updates to aggregate")
        self._fold()
        assert self._acc is not None
        out: dict[str, np.ndarray] = {}
        for (name, shape, dtype_text), acc in zip(self._schema, self._acc, strict=True):
            dtype = np.dtype(dtype_text)
            if acc.dtype == dtype:
                mean = np.divide(acc, acc.dtype.type(self._total))
            else:
                mean = np.divide(acc, self._total, dtype=np.float64 if dtype.kind != "f" else acc.dtype)
                if dtype.kind != "f":
                    np.rint(mean, out=mean)
                mean = mean.astype(dtype)
            out[name] = mean.reshape(shape)
        return Params.from_arrays(out, ParamsKind.DELTA, copy=False)

    # -- folding ------------------------------------------------------------------

    def _fold(self) -> None:
        """Add the pending updates into the accumulators, one cache-sized block at a time."""
        if not self._pending:
            return
        assert self._schema is not None
        if self._acc is None:
            self._acc = [
                np.zeros(math.prod(shape), _acc_dtype(np.dtype(dt))) for _, shape, dt in self._schema
            ]
        pending, self._pending = self._pending, []
        accs = self._acc
        sources = [
            [(upd[name].reshape(-1), acc.dtype.type(w)) for upd, w in pending]
            for (name, _, _), acc in zip(self._schema, accs, strict=True)
        ]
        assign = self._fresh

        def fold(segments: list[Segment]) -> None:
            temps: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}
            for index, start, stop in segments:
                acc = accs[index]
                if acc.dtype not in temps:
                    size = _BLOCK_BYTES // acc.dtype.itemsize
                    temps[acc.dtype] = (np.empty(size, acc.dtype), np.empty(size, acc.dtype))
                _fold_range(acc, sources[index], start, stop, temps[acc.dtype], assign=assign)

        _run([partial(fold, segs) for segs in _split([a.size for a in accs], self._threads)])
        self._fresh = False


def _fold_range(
    acc: np.ndarray,
    sources: list[tuple[np.ndarray, np.generic]],
    begin: int,
    end: int,
    temps: tuple[np.ndarray, np.ndarray],
    *,
    assign: bool,
) -> None:
    """``acc[begin:end] (+)= Σ w·x[begin:end]`` over ``sources``, reading each ``x`` once.

    Works block by block in the two ``temps`` buffers; with ``assign`` the accumulator
    is overwritten instead of added to (the first fold). Each value is computed in the
    same order whatever the blocks, so the result does not depend on how work is split.
    """
    block_sum, term = temps
    step = block_sum.size
    (x0, w0), rest = sources[0], sources[1:]
    for start in range(begin, end, step):
        stop = min(start + step, end)
        n = stop - start
        target = acc[start:stop] if assign else block_sum[:n]
        np.multiply(x0[start:stop], w0, out=target)
        if rest:
            t = term[:n]
            for x, w in rest:
                np.multiply(x[start:stop], w, out=t)
                np.add(target, t, out=target)
        if not assign:
            chunk = acc[start:stop]
            np.add(chunk, target, out=chunk)


def _check_weight(weight: object) -> float:
    """``weight`` as a float, or ``StrategyError`` unless it is a finite number > 0."""
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise StrategyError(f"update weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w) or w <= 0:
        raise StrategyError(f"update weight must be finite and > 0, got {weight!r}")
    return w


def weighted_mean(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """Σ wᵢ·uᵢ / Σ wᵢ as a DELTA, computed by :class:`WeightedMean`; inputs are not changed.

    Raises ``StrategyError`` when the sequences differ in length or are empty, and what
    :meth:`WeightedMean.add` raises for a bad update or weight.
    """
    if len(updates) != len(weights):
        raise StrategyError(f"got {len(updates)} updates but {len(weights)} weights")
    agg = WeightedMean()
    for update, weight in zip(updates, weights, strict=True):
        agg.add(update, weight)
    return agg.result()
