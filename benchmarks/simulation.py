"""Simulation overhead on the reference workload, and scale to many virtual nodes.

Reference workload (issue #2): digits, 10 nodes, Dirichlet α=0.5, MLP 64-64-10, SGD
lr 0.05, batch 32, 1 local epoch, FedAvg, 30 rounds, centralized evaluation every round.
Measured from process start to exit of `potluck simulate`, with the peak RSS of the whole
process tree. The floor is the same Python importing torch and doing nothing else.

Issue 13 adds a round time for the ``charlm`` language model: a tiny model (context 32,
width 32, one block, 2 heads, 20 AdamW steps of 16 blocks per round) on Tiny Shakespeare,
8 nodes with a contiguous split, 10 rounds. Its "final acc" cell holds the held-out
perplexity instead (a language model has no accuracy).

    python benchmarks/simulation.py            # reference workload + 1,000 nodes + charlm
    python benchmarks/simulation.py --scale    # also 10,000 nodes (MNIST, slower)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _measure import median, run_measured, table

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
POTLUCK = [sys.executable, "-m", "potluck.cli"]
REFERENCE = ["--nodes", "10", "--partition", "dirichlet", "--alpha", "0.5", "--rounds", "30", "--strategy", "fedavg",
             "-F", "lr=0.05", "-F", "batch_size=32", "-F", "epochs=1", "-F", "momentum=0.0"]

CHARLM = ["-F", "context=32", "-F", "width=32", "-F", "depth=1", "-F", "heads=2", "-F", "steps=20", "-F", "batch_size=16",
          "-F", 'device="cpu"']


def simulate(args: list[str]) -> tuple[list[object], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        run = run_measured([*POTLUCK, "simulate", "--run-dir", f"{tmp}/run", *args])
        if run.returncode != 0:
            raise SystemExit(f"potluck simulate failed: {run.stderr[-2000:]}")
        lines = [json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    rounds = [line["seconds"] for line in lines]
    last = lines[-1]
    acc = last["accuracy"] if "accuracy" in last else f"ppl {last['metrics']['perplexity']:.2f}"
    return lines, {"total": run.seconds, "round": median(rounds), "rss": run.peak_rss_mb, "acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="store_true", help="also run 10,000 nodes on MNIST")
    parser.add_argument("--text", type=Path, default=TEXT, help="text for the charlm row (skipped when missing)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the reference workload (median)")
    opts = parser.parse_args()

    floor = [run_measured([sys.executable, "-c", "import torch"]) for _ in range(opts.repeat)]
    floor_s, floor_rss = median([f.seconds for f in floor]), median([f.peak_rss_mb for f in floor])
    rows: list[list[object]] = [["python -c 'import torch' (floor)", floor_s, float("nan"), floor_rss, float("nan"), 1.0]]

    refs = [simulate(REFERENCE)[1] for _ in range(opts.repeat)]
    ref = {k: median([r[k] for r in refs]) for k in refs[0]}
    rows.append(["reference: digits, 10 nodes, 30 rounds", ref["total"], ref["round"], ref["rss"], ref["acc"],
                 ref["total"] / floor_s])

    _, big = simulate(["--nodes", "1000", "--fraction", "0.05", "--partition", "iid", "--rounds", "20",
                       "-F", "epochs=1", "-F", "momentum=0.0"])
    rows.append(["digits, 1,000 nodes, 50 per round, 20 rounds", big["total"], big["round"], big["rss"], big["acc"],
                 big["total"] / floor_s])
    if opts.scale:
        if not MNIST.is_dir():
            raise SystemExit(f"--scale needs MNIST at {MNIST}")
        _, huge = simulate(["--task", "mlp", "--data-path", str(MNIST), "--nodes", "10000", "--fraction", "0.01",
                            "--partition", "iid", "--rounds", "10", "-F", "epochs=1"])
        rows.append(["mnist mlp, 10,000 nodes, 100 per round, 10 rounds", huge["total"], huge["round"], huge["rss"],
                     huge["acc"], huge["total"] / floor_s])
    if opts.text.is_file():
        _, lm = simulate(["--task", "charlm", "--data-path", str(opts.text), "--nodes", "8", "--partition", "contiguous",
                          "--rounds", "10", *CHARLM])
        rows.append(["charlm tiny, 8 nodes, 10 rounds (final: perplexity)", lm["total"], lm["round"], lm["rss"],
                     lm["acc"], lm["total"] / floor_s])
    else:
        print(f"charlm row skipped: no text at {opts.text} (--text FILE)")
    print(table(["workload", "total s", "median round s", "peak RSS MB", "final acc", "total / floor"], rows))


if __name__ == "__main__":
    main()
