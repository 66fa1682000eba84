"""FedAvg aggregation speed against the memory-read floor, and its extra memory.

Folds N updates of P float32 values (default 100 × 10M, 4 GB of inputs) into the
streaming weighted mean, and compares with the floor: reading the same bytes once with
numpy (``np.add.reduce`` over each update), measured in the same run, single-threaded
and split over the same threads the aggregator uses (all cores). Three ways to
validate: none (inputs checked at decode time), a check of each update as it is added
(one more read of it; the default, batch 4), and the check fused into the fold
(``check_finite="fold"``, batch ``--fused-batch``). Peak memory above the inputs is
measured with tracemalloc (numpy reports its buffers to it).

    python benchmarks/aggregation.py                 # 100 × 10M
    python benchmarks/aggregation.py --updates 20    # quicker
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import tracemalloc
from typing import Literal

import numpy as np
from _measure import median, table

from potluck.core.params import Params, ParamsKind
from potluck.strategies.aggregate import WeightedMean, default_threads


def read_floor(arrays: list[np.ndarray], threads: int) -> float:
    """Seconds to read every array once (a sum), over ``threads`` threads."""
    def work(parts: list[np.ndarray]) -> None:
        for part in parts:
            np.add.reduce(part)

    chunks = [[a[i * len(a) // threads:(i + 1) * len(a) // threads] for a in arrays] for i in range(threads)]
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(c,)) for c in chunks[1:]]
    for w in workers:
        w.start()
    work(chunks[0])
    for w in workers:
        w.join()
    return time.perf_counter() - started


def fold(updates: list[Params], weights: list[float], check_finite: bool | Literal["fold"],
         batch: int = 4) -> tuple[float, Params]:
    started = time.perf_counter()
    agg = WeightedMean(check_finite=check_finite, batch=batch)
    for update, weight in zip(updates, weights):
        agg.add(update, weight)
    out = agg.result()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fused-batch", type=int, default=16, help="updates per pass of the fused fold")
    opts = parser.parse_args()

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(opts.params, dtype=np.float32) for _ in range(opts.updates)]
    updates = [Params.from_arrays({"w": a}, ParamsKind.DELTA, copy=False) for a in arrays]
    weights = [float(w) for w in rng.integers(10, 1000, opts.updates)]
    threads = default_threads()
    model_mb = opts.params * 4 / 2**20

    floor1 = median([read_floor(arrays, 1) for _ in range(opts.repeat)])
    floor_t = median([read_floor(arrays, threads) for _ in range(opts.repeat)])
    plain = median([fold(updates, weights, False)[0] for _ in range(opts.repeat)])
    checked = median([fold(updates, weights, True)[0] for _ in range(opts.repeat)])
    fused = median([fold(updates, weights, "fold", opts.fused_batch)[0] for _ in range(opts.repeat)])

    peaks = []
    for check, batch in ((True, 4), ("fold", opts.fused_batch)):
        tracemalloc.start()
        tracemalloc.reset_peak()
        _, out = fold(updates, weights, check, batch)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()

    # Correctness on a slice against numpy's own weighted average.
    sl = slice(0, 100_000)
    oracle = np.average(np.stack([a[sl] for a in arrays]), axis=0, weights=weights)
    error = float(np.max(np.abs(out["w"][sl] - oracle)))

    gb = opts.updates * opts.params * 4 / 1e9
    rows = [
        ["floor: read once, 1 thread", floor1, gb / floor1, floor1 / floor_t, float("nan")],
        [f"floor: read once, {threads} threads", floor_t, gb / floor_t, 1.0, float("nan")],
        ["FedAvg fold (inputs pre-validated)", plain, gb / plain, plain / floor_t, float("nan")],
        ["FedAvg fold + NaN/Inf check as added", checked, gb / checked, checked / floor_t, peaks[0] / model_mb],
        [f"FedAvg fold + fused NaN/Inf check (batch {opts.fused_batch})", fused, gb / fused, fused / floor_t,
         peaks[1] / model_mb],
    ]
    print(f"{opts.updates} updates × {opts.params:,} float32 = {gb:.1f} GB; model = {model_mb:.0f} MiB; "
          f"aggregator threads = {threads}; max |error| vs np.average = {error:.2e}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(table(["step", "seconds", "GB/s", f"× floor ({threads} threads)", "peak extra memory (models)"], rows))


if __name__ == "__main__":
    main()
