"""The streaming weighted mean: Δ = Σ nᵢ·dᵢ / Σ nᵢ, folded in one update at a time.

Every averaging strategy (FedAvg, FedProx, FedAvgM, the FedOpt family) aggregates with
:class:`WeightedMean`; they differ only in what they do with the mean afterwards.

Cost, for a model of ``M`` values and ``K`` updates:

* memory: one accumulator of ``M`` values plus two small block buffers per thread; the
  aggregator also keeps up to ``batch`` pending updates alive (references, never copies);
  :meth:`WeightedMean.result` allocates the ``M`` values it returns;
* time: each update is read once to check it is finite and once to fold it in; the
  accumulator is read and written once per ``batch`` updates. Folding works in blocks
  that stay in the CPU cache, so no temporary is ever as large as the model, and large
  folds and checks are shared by all cores (numpy releases the GIL). Each value is
  computed in the same order whatever the split, so results are bit-for-bit the same
  for any thread count.
* ``check_finite="fold"`` fuses the check into the fold, so each update is read once:
  every cache block of the batch's weighted sum is checked while it is in cache (a NaN
  or Inf term always reaches the sum), and only a suspect block is checked value by
  value. The fold writes into a second accumulator, so the first stays intact until
  the batch is known good: a NaN/Inf found halfway through the model drops its update
  and the batch is refolded from the intact sum without it. The price is that a
  refusal comes late (when its batch is folded), so it is reported in
  :attr:`WeightedMean.refused` instead of raised by its ``add``; memory is two
  accumulators, the second of which :meth:`WeightedMean.result` hands out as the mean.
  ``check_finite=False`` skips the check (the caller checked at decode time).

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
from typing import Literal

import numpy as np

from potluck.core.errors import NonFiniteError, StrategyError
from potluck.core.params import Params, ParamsKind, SchemaEntry

# Bytes of one block buffer: two of them fill a 1 MiB L2. Blocks do not change the
# results; 512 KiB cost 10–18% less CPU than 256 KiB on the benchmark machine (AMD EPYC).
_BLOCK_BYTES = 1 << 19
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
    """Threads a large fold uses by default: every CPU this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus)


def _split(sizes: Sequence[int], parts: int) -> list[list[Segment]]:
    """Cut arrays of ``sizes`` (taken end to end) into ``parts`` runs of near-equal length."""
    total = sum(sizes)
    parts = min(parts, total // max(1, _MIN_PARALLEL // 4))  # at least a quarter of the minimum each
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
            The result depends on it (the order of the additions), not on the check.
        check_finite: ``True``: ``add`` refuses an update holding NaN/Inf (one extra
            read of it); ``"fold"``: the check is fused into the fold and a refusal is
            reported in :attr:`refused` (see the module docstring); ``False``: none.
        threads: threads that share a large fold or check (≥ 2**20 values); the
            result does not depend on it. Default :func:`default_threads`.
    """

    __slots__ = (
        "_schema", "_batch", "_check_finite", "_pending", "_acc", "_spare", "_fresh",
        "_threads", "_count", "_total", "_added", "refused",
    )

    def __init__(
        self,
        *,
        schema: tuple[SchemaEntry, ...] | None = None,
        batch: int = 4,
        check_finite: bool | Literal["fold"] = True,
        threads: int | None = None,
    ) -> None:
        for label, value in (("batch", batch), ("threads", 1 if threads is None else threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StrategyError(f"{label} must be a positive integer, got {value!r}")
        if check_finite not in (True, False, "fold"):
            raise StrategyError(f"check_finite must be True, False or 'fold', got {check_finite!r}")
        self._threads = default_threads() if threads is None else threads
        self._schema = tuple(schema) if schema is not None else None
        self._batch = batch
        self._check_finite = check_finite
        self._pending: list[tuple[Params, float, int]] = []  # (update, weight, position among adds)
        self._acc: list[np.ndarray] | None = None  # flat, one per array, in _acc_dtype
        self._spare: list[np.ndarray | None] = []  # "fold": where the next pass writes, per array
        self._fresh = True  # accumulators hold nothing yet: the first fold assigns
        self._count = 0
        self._total = 0.0  # of the folded updates; pending ones are added in total_weight
        self._added = 0
        #: ``check_finite="fold"``: updates dropped when their batch was folded, as
        #: (position among the accepted ``add`` calls, from 0; the NonFiniteError).
        self.refused: list[tuple[int, NonFiniteError]] = []

    @property
    def count(self) -> int:
        """Number of updates accepted so far (less those :attr:`refused` since)."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights accepted so far (the denominator of the mean)."""
        total = self._total
        for _, w, _ in self._pending:
            total += w
        return total

    @property
    def schema(self) -> tuple[SchemaEntry, ...] | None:
        """The schema updates must have, or ``None`` before the first update."""
        return self._schema

    def add(self, update: Params, weight: float) -> None:
        """Fold in ``update`` with ``weight`` (its number of examples, > 0).

        Raises, leaving the aggregate unchanged:
            StrategyError: ``weight`` is not a finite number > 0, or ``update`` is not Params.
            SchemaMismatch: names, shapes or dtypes differ from the first update's.
            NonFiniteError: a float array holds NaN or Inf (when ``check_finite`` is True).
        """
        if not isinstance(update, Params):
            raise StrategyError(f"update must be Params, got {type(update).__name__}")
        w = _check_weight(weight)
        if self._schema is not None:
            update.check_schema(self._schema, what="update")
        if self._check_finite is True and not _all_finite(update, self._threads):
            update.check_finite(what="update")  # raises NonFiniteError naming the array
        if self._schema is None:
            self._schema = update.schema
        self._pending.append((update, w, self._added))
        self._added += 1
        self._count += 1
        if len(self._pending) >= self._batch:
            self._fold()

    def result(self) -> Params:
        """The weighted mean so far as a DELTA, with the updates' names, shapes and dtypes.

        Raises ``StrategyError`` when no update was added (or every one was refused).
        """
        self._fold()
        if self._count == 0 or self._schema is None or self._acc is None:
            raise StrategyError("no updates to aggregate")
        out: dict[str, np.ndarray] = {}
        for i, ((name, shape, dtype_text), acc) in enumerate(zip(self._schema, self._acc, strict=True)):
            dtype = np.dtype(dtype_text)
            if acc.dtype == dtype:
                spare = self._spare[i] if i < len(self._spare) else None
                mean = np.divide(acc, acc.dtype.type(self._total), out=spare)
                if spare is not None:
                    self._spare[i] = None  # handed out: the next pass allocates another
            else:
                mean = np.divide(acc, self._total, dtype=np.float64 if dtype.kind != "f" else acc.dtype)
                if dtype.kind != "f":
                    np.rint(mean, out=mean)
                mean = mean.astype(dtype)
            out[name] = mean.reshape(shape)
        return Params.from_arrays(out, ParamsKind.DELTA, copy=False)

    # -- folding ------------------------------------------------------------------

    def _fold(self) -> None:
        """Add the pending updates into the accumulators, one cache-sized block at a time.

        With ``check_finite="fold"`` the pass writes into the spare accumulators and
        checks as it goes; when it finds NaN/Inf, the bad updates are dropped and the
        pass is made again without them from the intact accumulators."""
        if not self._pending:
            return
        assert self._schema is not None
        pending, self._pending = self._pending, []
        fused = self._check_finite == "fold"
        if self._acc is None:
            self._acc = [np.empty(math.prod(shape), _acc_dtype(np.dtype(dt))) for _, shape, dt in self._schema]
        if fused and not self._fresh:
            self._spare += [None] * (len(self._acc) - len(self._spare))
            self._spare = [np.empty_like(a) if s is None else s for a, s in zip(self._acc, self._spare)]
        out: list[np.ndarray] = self._spare if fused and not self._fresh else self._acc  # type: ignore[assignment]
        bad = self._pass(pending, out, check=fused)
        if bad:
            for j in sorted(bad):
                update, _, position = pending[j]
                self.refused.append((position, _non_finite_error(update)))
            self._count -= len(bad)
            pending = [p for j, p in enumerate(pending) if j not in bad]
            if not pending:
                return
            self._pass(pending, out, check=False)
        for _, w, _ in pending:
            self._total += w
        if out is not self._acc:
            self._acc, self._spare = out, list(self._acc)
        self._fresh = False

    def _pass(self, pending: list[tuple[Params, float, int]], out: list[np.ndarray], *, check: bool) -> set[int]:
        """``out = acc + Σ w·x`` (``out = Σ w·x`` on the first fold) over ``pending``; with
        ``check``, the indices into ``pending`` of updates holding NaN/Inf."""
        assert self._schema is not None and self._acc is not None
        accs, assign = self._acc, self._fresh
        sources = [
            [(upd[name].reshape(-1), acc.dtype.type(w)) for upd, w, _ in pending]
            for (name, _, _), acc in zip(self._schema, accs, strict=True)
        ]
        bad: set[int] = set()

        def fold(segments: list[Segment]) -> None:
            temps: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}
            for index, start, stop in segments:
                acc = accs[index]
                if acc.dtype not in temps:
                    size = _BLOCK_BYTES // acc.dtype.itemsize
                    temps[acc.dtype] = (np.empty(size, acc.dtype), np.empty(size, acc.dtype))
                _fold_range(acc, out[index], sources[index], start, stop, temps[acc.dtype], assign=assign,
                            bad=bad if check else None)

        _run([partial(fold, segs) for segs in _split([a.size for a in accs], self._threads)])
        return bad


def _fold_range(
    acc: np.ndarray,
    out: np.ndarray,
    sources: list[tuple[np.ndarray, np.generic]],
    begin: int,
    end: int,
    temps: tuple[np.ndarray, np.ndarray],
    *,
    assign: bool,
    bad: set[int] | None,
) -> None:
    """``out[begin:end] = acc[begin:end] + Σ w·x[begin:end]`` over ``sources``, reading each ``x`` once.

    ``out`` may be ``acc`` (in place). Works block by block in the two ``temps`` buffers;
    with ``assign`` the accumulator is not read (the first fold). With ``bad``, each
    block's weighted sum is checked while in cache, and the index of every source with
    NaN/Inf in a non-finite block is added to it. Each value is computed in the same
    order whatever the blocks, so the result does not depend on how work is split.
    """
    block_sum, term = temps
    step = block_sum.size
    (x0, w0), rest = sources[0], sources[1:]
    floats = bad is not None and any(x.dtype.kind == "f" for x, _ in sources)
    for start in range(begin, end, step):
        stop = min(start + step, end)
        n = stop - start
        target = out[start:stop] if assign else block_sum[:n]
        np.multiply(x0[start:stop], w0, out=target)
        if rest:
            t = term[:n]
            for x, w in rest:
                np.multiply(x[start:stop], w, out=t)
                np.add(target, t, out=target)
        if floats and not math.isfinite(float(np.add.reduce(target))):
            assert bad is not None
            bad.update(j for j, (x, _) in enumerate(sources)
                       if x.dtype.kind == "f" and not np.isfinite(x[start:stop]).all())
        if not assign:
            np.add(acc[start:stop], target, out=out[start:stop])


def _non_finite_error(update: Params) -> NonFiniteError:
    """The error :meth:`Params.check_finite` raises for ``update``."""
    try:
        update.check_finite(what="update")
    except NonFiniteError as exc:
        return exc
    return NonFiniteError("update: holds NaN/Inf values")  # unreachable: it was found to


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
