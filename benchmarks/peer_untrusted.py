"""Untrusted peers: what poisoning does to the mean and to robust averaging, and what the
checks cost.

    .venv/bin/python benchmarks/peer_untrusted.py [--peers 8] [--steps 4] [--size 1000000]

1. ``peer simulate``'s path (one group of ``--peers`` digits peers): the final mean held-out
   loss of a clean run, and with 2 poisoners (pseudo-gradient × −10) under the mean, the
   median and the 25 % trimmed mean.
2. For one ``--size`` float32 vector split into ``--peers`` parts: the time to sign a
   contribution (Merkle tree over the parts + one Ed25519 signature), to check one chunk
   (signature + path), and to reduce one part by mean, median and trimmed mean.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from potluck.apps.peer import run_simulation
from potluck.ledger.signing import derived_key, public_bytes
from potluck.peer.allreduce import part_bounds
from potluck.peer.contributions import check_chunk, check_contribution, sign_contribution
from potluck.peer.robust import Averaging
from potluck.peer.simulation import SimSettings


def poisoning(peers: int, steps: int) -> None:
    runs = [("clean, mean", {}), ("2 poisoners, mean", {"poisoners": 2}),
            ("2 poisoners, median", {"poisoners": 2, "averaging": Averaging("median")}),
            ("2 poisoners, trimmed 0.25", {"poisoners": 2, "averaging": Averaging("trimmed", 0.25)})]
    clean = None
    for name, extra in runs:
        started = time.perf_counter()
        final = run_simulation("digits", None, peers, SimSettings(outer_steps=steps, group_size=peers, **extra))[-1]
        clean = clean if clean is not None else final.mean_loss
        print(f"{name:<28} final mean loss {final.mean_loss:10.4f}  ({final.mean_loss / clean:6.2f} × clean)  "
              f"{time.perf_counter() - started:5.1f} s")


def costs(peers: int, size: int) -> None:
    rng = np.random.default_rng(0)
    vector = rng.normal(size=size).astype(np.float32)
    bounds = part_bounds(size, peers)
    key = derived_key(0, "bench")
    started = time.perf_counter()
    c, tree = sign_contribution(key, "bench", "run", 1, "g", 1.0, vector, bounds)
    signed = time.perf_counter() - started
    start, stop = bounds[0]
    started = time.perf_counter()
    check_contribution(c, public_bytes(key), run="run", step=1, group="g")
    check_chunk(c, 0, peers, vector[start:stop], tree.path(0))
    checked = time.perf_counter() - started
    print(f"sign a contribution of {size:,} floats in {peers} parts: {signed * 1e3:7.2f} ms; "
          f"check one chunk: {checked * 1e3:7.2f} ms")
    chunks = [rng.normal(size=stop - start).astype(np.float32) for _ in range(peers)]
    for averaging in (Averaging("mean"), Averaging("median"), Averaging("trimmed", 0.25)):
        reducer = averaging.reducer(0, stop - start, [f"p{i}" for i in range(peers)])
        started = time.perf_counter()
        for i, chunk in enumerate(chunks):
            reducer.add(f"p{i}", chunk, 1.0)
        reducer.result()
        print(f"reduce one part ({stop - start:,} floats × {peers}) by {averaging.rule:<8}: "
              f"{(time.perf_counter() - started) * 1e3:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    poisoning(args.peers, args.steps)
    costs(args.peers, args.size)


if __name__ == "__main__":
    main()
